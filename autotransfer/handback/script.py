"""``export --format script``: one self-contained Python file that trains a study's protocol on an
ImageFolder with torch and timm alone (PIL and safetensors come with them).

The file is ``script_template.py`` (a real module: ruff and mypy read it) with the protocol's
values as constants (``_constants``) in place of its placeholder block. Its body re-states
autotransfer's semantics in plain torch: the depth groups as module names, freezing (no gradient,
eval mode), re-initialisation from a freshly built model seeded like ``backbones.surgery.reinit``,
per-group learning rates (layer decay, head multiplier), weight decay off for 1-d parameters, L2-SP,
the BN modes of ``surgery.train_mode``, the schedule's stages of ``train.schedule`` (groups that join
later train from the step it names), SGD with classical momentum or AdamW, cosine decay per step,
the epoch sampler and the random-resized crop of ``data.device``. ``tests/test_export_script.py``
checks each piece against autotransfer's own and the trained result against ``autotransfer train
--config``.
"""

from __future__ import annotations

import pprint
from pathlib import Path
from typing import Any

from autotransfer.core.knobs import TRIAL_KNOBS

__all__ = ["script_text", "TEMPLATE"]

#: The script's code: a real module (ruff and mypy read it) whose protocol block the export fills in.
TEMPLATE = Path(__file__).with_name("script_template.py")
_BEGIN, _END = "# BEGIN PROTOCOL", "# END PROTOCOL\n"


def script_text(
    payload: dict[str, Any],
    source,
    weights_name: str,
    *,
    script_name: str,
    members: list[dict[str, Any]],
    flip: bool,
    crop: tuple[tuple[float, float], tuple[float, float]],
) -> str:
    """The script for ``payload`` (an ``export_payload``) on ``source`` (``export.SourceModel``), whose
    initial weights are the file ``weights_name`` beside it and whose own name is ``script_name``. ``members``: each network's protocol
    (``export.member_protocols``); ``flip``: whether the dataset is flipped; ``crop``: the
    random-resized crop's area and ratio ranges (``export.crop_ranges``)."""
    head, body = _template_parts()
    return (
        _docstring(payload, members, weights_name, script_name)
        + head
        + _constants(payload, source, weights_name, members, flip, crop)
        + body
    )


def _template_parts() -> tuple[str, str]:
    """The template's code before and after its protocol block, without its docstring."""
    text = TEMPLATE.read_text(encoding="utf-8")
    code = text.split('"""', 2)[2].lstrip("\n")  # the export writes its own docstring
    head, rest = code.split(_BEGIN, 1)  # the marker starts a line: head ends with its newline
    return head, rest.split(_END, 1)[1]


def _docstring(payload: dict[str, Any], members: list[dict[str, Any]], weights_name: str, script_name: str) -> str:
    from autotransfer.core.version import __version__

    study, name = payload.get("study"), script_name
    ensemble = (
        f"\nThe model autotransfer handed back averages the softmax of {len(members)} networks (trials"
        f" {', '.join(str(m['trial']) for m in members)}).\nEach run trains one (--member K, default 1); run it"
        " once per member and average their\nprobabilities to rebuild it.\n"
        if len(members) > 1
        else ""
    )
    return f'''#!/usr/bin/env python3
"""Train the fine-tuning protocol autotransfer found for study {study!r} on an ImageFolder.

Exported by autotransfer {__version__} on {payload.get("exported_at")}. Needs torch and timm only
(PIL, numpy and safetensors come with them).

    python {name} DATA_DIR --out MODEL_DIR [--weights {weights_name}] [--eval-dir TEST_DIR] [--device cpu]

DATA_DIR holds one sub-folder of images per class (classes in natural order, as timm's reader sorts
them: 2 before 10). The script trains on every image there, as autotransfer trained the final model
on train+val, then writes MODEL_DIR in timm's pretrained format (config.json + model.safetensors):
timm.create_model("local-dir:MODEL_DIR", pretrained=True) builds it, and `autotransfer predict` and
`evaluate` read it. --eval-dir scores it on another folder of the same classes.
{ensemble}
The protocol, in autotransfer's words (its docs/design.md):
- depth groups: the backbone's modules in ordered groups, stem first, head excluded (GROUPS);
- freeze f: groups 0..f-1 get no gradient and run BatchNorm in eval mode;
- re-init r: the last r groups start from fresh weights (the architecture's own initialisation,
  seeded with SEED); they always run BatchNorm in train mode;
- BN mode: "adapt" runs BatchNorm of the trainable pretrained groups in train mode, "frozen" in eval;
- learning rates: group g gets lr * layer_decay ** (G - 1 - g), the new head lr * head_lr_mult; the
  head starts at zero; no weight decay on 1-d parameters (biases, norms);
- L2-SP: alpha/2 ||w - w0||^2 pulls the kept pretrained weights towards the source (and replaces
  weight decay on them);
- lr schedule: cosine from lr to 0 over STEPS optimizer steps, no warm-up, one for the whole run;
- stages ("schedule"): "one-stage" trains groups f..G-1 from the first step; "lp-ft" trains only the
  head and the re-initialised groups for the first stage_frac of STEPS, then groups f..G-r-1 too;
  "gradual" starts like "lp-ft" and lets the pretrained groups f..G-r-1 join one at a time from the
  top, the last at stage_frac of STEPS. A group that has not joined gets no gradient (so no momentum,
  weight decay or L2-SP) and runs in eval mode, like a frozen one;
- data: every image resized (bicubic) so its shorter side is RESOLUTION px and centre-cropped; each
  step draws BATCH_SIZE images from a fresh random permutation per epoch and augments them with a
  random-resized crop (bilinear) and, where FLIP, a horizontal flip.
Differences from autotransfer's own run, all outside the protocol: this script computes in float32
(autotransfer uses bf16 autocast on GPUs with native bf16), and with frozen groups autotransfer
caches their outputs for a bank of augmented views per image, where this script augments afresh.
"""
'''


def _constants(
    payload: dict[str, Any],
    source,
    weights_name: str,
    members: list[dict[str, Any]],
    flip: bool,
    crop: tuple[tuple[float, float], tuple[float, float]],
) -> str:
    settings = payload["settings"]
    scale, ratio = crop
    groups = "\n".join(
        f"    {modules!r},  # {i}: {name}" for i, (modules, name) in enumerate(zip(source.groups, source.group_names))
    )
    member_lines = "\n".join(f"    {_member_repr(m)}," for m in members)
    return f"""# -- the protocol (autotransfer study {payload.get("study")!r}) ----------------------------------------
ARCH = {source.architecture!r}  # timm architecture
MODEL_KWARGS = {pprint.pformat(source.model_kwargs, width=80)}  # its constructor arguments beside num_classes
FRESH_KWARGS = {pprint.pformat(source.fresh_kwargs, width=80)}  # how autotransfer builds the fresh model re-init copies from
WEIGHTS = {weights_name!r}  # the source weights as the study used them (new head at zero), beside this file
NUM_CLASSES = {source.num_classes}
RESOLUTION = {int(settings["resolution"])}  # px, square
MEAN = {tuple(source.mean)!r}
STD = {tuple(source.std)!r}
BATCH_SIZE = {int(settings["batch_size"])}
STEPS = {int(settings["steps"])}  # the budget, in optimizer steps
OPTIMIZER = {settings["optimizer"]!r}  # "sgd": classical momentum, no Nesterov; "adamw": betas (momentum, 0.999)
AUGMENT = {bool(settings.get("augment", True))!r}  # random-resized crop (+ flip); False: the plain resized image
FLIP = {flip!r}  # horizontal flips ({settings["target"]})
CROP_SCALE = {tuple(scale)!r}  # the crop's area, as a fraction of the image
CROP_RATIO = {tuple(ratio)!r}  # the crop's aspect ratio range (width / height)
SEED = {int(settings["seed"])}
METRIC = {payload.get("metric") or settings.get("metric") or "accuracy"!r}  # what --eval-dir reports

# Depth groups, stem first: the module names each group runs (head excluded).
GROUPS = [
{groups}
]
HEAD = {source.head!r}  # the new classifier

# One protocol per network of the handed-back model (trial: the study's trial number).
MEMBERS = [
{member_lines}
]
"""


def _member_repr(member: dict[str, Any]) -> str:
    keys = ("trial", *(k.name for k in TRIAL_KNOBS))
    values = ", ".join(f"{k}={member[k]!r}" for k in keys)
    note = "" if member["trained_on"] != "train" else "  # tune handed back this member trained on the train split only"
    return f"dict({values}){note}"
