"""What a model folder records of its study, without the paths of the machine that trained it.

A model folder is a deliverable: it is copied, shared and pushed to the Hugging Face hub, so its
``config.json``, card and files name a dataset folder by its name alone (``folder:/home/me/data?n=500``
becomes ``folder:data?n=500``), a weights file or surface by its file name; ``builtin:`` specs stay
as they are. A folder's data can never lie inside it (the model folder is replaced whole), so the
name is all that is kept; ``handback.evaluate`` looks for it in the current folder and beside the
model folder, and the recorded fingerprint says whether what it found is the study's data.
"""

from __future__ import annotations

from typing import Any

from autotransfer.backbones.model_dir import file_name, portable_model_spec

__all__ = ["portable_dataset_spec", "portable_model_spec", "portable_prior", "portable_settings"]


def portable_dataset_spec(spec: Any) -> Any:
    """A dataset spec with its path cut to the folder's (or manifest's) name, options kept:
    ``folder:/a/b/data?n=500`` -> ``folder:data?n=500``, ``/a/b/list.csv`` -> ``list.csv``;
    ``builtin:NAME`` and anything that is not a string come back unchanged."""
    if not isinstance(spec, str) or not spec or spec.startswith("builtin:"):
        return spec
    base, sep, options = spec.rpartition("?")  # as data.sources.split_spec reads it
    if not sep:
        base, options = spec, ""
    prefix = "folder:" if base.startswith("folder:") else ""
    return f"{prefix}{file_name(base[len(prefix) :])}{sep}{options}"


def portable_prior(prior: Any) -> Any:
    """``surface:/a/surface.json`` -> ``surface:surface.json``; ``quadrant`` and ``none`` unchanged."""
    if isinstance(prior, str) and prior.startswith("surface:"):
        return f"surface:{file_name(prior[len('surface:') :])}"
    return prior


def portable_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``StudySettings.to_dict()`` whose dataset, unlabelled images, model and prior
    hold no path of this machine."""
    out = dict(settings)
    for key in ("target", "unlabelled"):
        if key in out:
            out[key] = portable_dataset_spec(out[key])
    if "model" in out:
        out["model"] = portable_model_spec(out["model"])
    if "prior" in out:
        out["prior"] = portable_prior(out["prior"])
    return out
