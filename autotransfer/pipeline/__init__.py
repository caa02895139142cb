"""The top library layer: the product's jobs, each a sequence of steps from the layers below.

- ``pipeline.tune``: estimate → prior → study (controls + search) → pick → final model → publish;
- ``pipeline.reproduce``: ``train --config``, the handed-back model again from an export;
- ``pipeline.sweep``: many ``tune`` runs that feed the surface of optimal protocols;
- ``pipeline.search_only``: the search trials alone, for the benchmarks.

Nothing below imports this package; the CLI sits on top of it (docs/design.md, "Layers").
"""
