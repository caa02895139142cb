"""The bottom layer: plain types every other layer may import, and nothing here imports them.

- ``core.errors``: ``AutotransferError``, the root of every error, and ``UserError``;
- ``core.protocol``: ``Protocol`` (one fine-tuning recipe) and ``ProtocolSpace`` (its search ranges);
- ``core.settings``: ``StudySettings``, everything a trial needs besides its protocol;
- ``core.schema``: the names of the study and trial attributes a study records;
- ``core.paths``: where autotransfer keeps its files, and safe names for them;
- ``core.diskspace``: a full disk found in an error's chain, said in one line (path, space);
- ``core.version``: the package version.

docs/design.md, "Layers", draws the whole stack.
"""
