"""The tuned model handed back by ``tune`` and ``train --config``: a model folder with its card.

``save_tuned_model`` writes ``config.json`` + ``model.safetensors`` (``backbones.model_dir``: the
layout ``timm.create_model("local-dir:DIR", pretrained=True)`` reads) and a ``README.md`` model
card: the data, the protocol, the test score with its 95% interval, the controls, how to load it.
The folder is portable: its files name no path of the machine that wrote them
(``handback.portable``), and the card opens with the Hugging Face front matter
(``handback.hub_card``).
"""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Any

from autotransfer.core.knobs import PROTOCOL_KNOBS, SCHEDULE_KNOBS
from autotransfer.core.protocol import Protocol, schedule_words
from autotransfer.core.settings import StudySettings
from autotransfer.handback.hub_card import front_matter, licence_lines, load_lines
from autotransfer.handback.portable import portable_dataset_spec, portable_settings

__all__ = ["save_tuned_model", "save_tuned_ensemble", "model_card"]


def save_tuned_model(
    backbone,
    directory: str | Path,
    settings: StudySettings,
    protocol: Protocol,
    *,
    classes: list[str],
    test_score: float,
    test_images: int,
    val_score: float | None = None,
    controls: dict[str, float | None] | None = None,
    study: str | None = None,
    trained_on: str = "train+val",
    freeze_reinit: tuple[int, int] | None = None,
    versions: dict[str, str] | None = None,
    self_training: dict[str, Any] | None = None,
) -> Path:
    """Write the fine-tuned ``backbone`` as a model folder at ``directory``; returns the folder.

    The folder's ``pretrained_cfg`` holds the study's resolution (the model was trained and scored
    at ``settings.resolution`` px, not at the source model's native size) and the source model's
    mean and std; ``label_names`` are the dataset's classes in label order. The folder is written
    to a temporary sibling and renamed into place (``backbones.model_dir.staged_model_dir``).
    """
    return save_tuned_ensemble(
        [
            (
                backbone,
                protocol,
                {"val_score": val_score, "trained_on": trained_on, "freeze_reinit": freeze_reinit, "trial": 0},
            )
        ],
        directory,
        settings,
        classes=classes,
        test_score=test_score,
        test_images=test_images,
        controls=controls,
        study=study,
        self_training=self_training,
        versions=versions,
    )


def _write_tuned_model(
    backbone,
    folder: Path,
    shown: Path,
    settings: StudySettings,
    protocol: Protocol,
    *,
    classes: list[str],
    test_score: float,
    test_images: int,
    val_score: float | None = None,
    controls: dict[str, float | None] | None = None,
    study: str | None = None,
    trained_on: str = "train+val",
    freeze_reinit: tuple[int, int] | None = None,
    versions: dict[str, str] | None = None,
    ensemble: dict[str, Any] | None = None,
    self_training: dict[str, Any] | None = None,
    deliverable: dict[str, Any] | None = None,
) -> None:
    """One model folder's files written into ``folder`` (in place: the caller stages it); its card
    names the folder ``shown``, its path relative to the folder that will hold it once renamed
    into place (``NAME``, ``NAME/members/2``). ``ensemble`` (from
    ``save_tuned_ensemble``) goes under ``config["autotransfer"]["ensemble"]``."""
    from autotransfer.backbones.model_dir import CARD_NAME, write_model_files
    from autotransfer.train.metrics import score_interval

    if freeze_reinit is None:
        freeze_reinit = protocol.integers(backbone.num_groups)
    low, high = score_interval(min(max(float(test_score), 0.0), 1.0), max(int(test_images), 1))
    if versions is None:
        from autotransfer.search.study import package_versions

        versions = package_versions()
    extra: dict[str, Any] = {
        "study": study,
        "metric": settings.metric,
        "scores": {
            "test": float(test_score),
            "test_images": int(test_images),
            "test_interval_95": [low, high],
            "val": None if val_score is None else float(val_score),
        },
        "controls": dict(controls or {}),
        "protocol": protocol.to_dict(),
        "derived": {
            "lr": protocol.lr,
            "elr": protocol.elr,
            "freeze": int(freeze_reinit[0]),
            "reinit": int(freeze_reinit[1]),
            "num_groups": backbone.num_groups,
        },
        "trained_on": trained_on,
        "settings": portable_settings(settings.to_dict()),
        "dataset_fingerprint": settings.fingerprint,
        "versions": versions,
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    if ensemble:
        extra["ensemble"] = ensemble
    if self_training:
        extra["self_training"] = {**self_training, "unlabelled": portable_dataset_spec(self_training.get("unlabelled"))}
    if deliverable:
        extra["deliverable"] = deliverable
    config = write_model_files(backbone, folder, label_names=list(classes), input_size=settings.resolution, extra=extra)
    (folder / CARD_NAME).write_text(model_card(config, shown))


def save_tuned_ensemble(
    members: list[tuple[Any, Protocol, dict[str, Any]]],
    directory: str | Path,
    settings: StudySettings,
    *,
    classes: list[str],
    test_score: float,
    test_images: int,
    controls: dict[str, float | None] | None = None,
    study: str | None = None,
    self_training: dict[str, Any] | None = None,
    versions: dict[str, str] | None = None,
    files: dict[str, str] | None = None,
    deliverable: dict[str, Any] | None = None,
) -> Path:
    """Write the handed-back model: its first member as the folder itself, the others as model
    folders under ``members/2``, ``members/3``... (``ENSEMBLE_DIR``), listed in the top
    ``config.json`` (``backbones.model_dir.ensemble_member_dirs`` reads them back).

    ``members``: ``(backbone, protocol, info)`` in the pick's order; ``info`` holds ``trial``,
    ``val_score``, ``test_score`` (the member alone), ``trained_on`` and ``freeze_reinit``.
    ``test_score`` is the whole model's (the mean softmax of the members). timm's
    ``local-dir:DIR`` reads the folder as the first member alone; ``autotransfer.load_model``
    reads all members. With one member the folder is a plain model folder. ``files`` (name ->
    text, e.g. ``metrics.json``) are written into the folder too.

    The whole folder, members and ``files`` included, is written to a temporary sibling and
    renamed into place (``backbones.model_dir.staged_model_dir``): an earlier folder at
    ``directory`` stays whole until the new one is complete, and a full disk is one line naming
    ``directory`` and the space the weights need.
    """
    from autotransfer.backbones.model_dir import ENSEMBLE_DIR, staged_model_dir, weights_bytes

    directory = Path(directory)
    shown = directory.expanduser().absolute().name  # the cards name the folder relative to its parent
    write = functools.partial(  # what every member's folder shares
        _write_tuned_model,
        classes=classes,
        test_images=test_images,
        controls=controls,
        study=study,
        versions=versions,
    )
    ensemble = None
    if len(members) > 1:
        ensemble = {
            "members": ["."] + [f"{ENSEMBLE_DIR}/{i + 1}" for i in range(1, len(members))],
            "combine": "mean of the members' softmax probabilities",
            "trials": [int(info["trial"]) for _, _, info in members],
            "member_test_scores": [float(info["test_score"]) for _, _, info in members],
            "member_val_scores": [info.get("val_score") for _, _, info in members],
            "trained_on": [str(info.get("trained_on", "train+val")) for _, _, info in members],
        }
    with staged_model_dir(directory, needed=weights_bytes(*(b for b, _, _ in members))) as staging:
        for i, (backbone, protocol, info) in enumerate(members[1:], start=2):
            write(
                backbone,
                staging / ENSEMBLE_DIR / str(i),
                Path(shown) / ENSEMBLE_DIR / str(i),
                settings,
                protocol,
                test_score=float(info["test_score"]),
                val_score=info.get("val_score"),
                trained_on=str(info.get("trained_on", "train+val")),
                freeze_reinit=info.get("freeze_reinit"),
            )
        backbone, protocol, info = members[0]
        write(
            backbone,
            staging,
            Path(shown),
            settings,
            protocol,
            test_score=test_score,
            val_score=info.get("val_score"),
            trained_on=str(info.get("trained_on", "train+val")),
            freeze_reinit=info.get("freeze_reinit"),
            ensemble=ensemble,
            self_training=self_training,
            deliverable=deliverable,
        )
        for name, text in (files or {}).items():
            (staging / name).write_text(text)
    return directory


def _score(value: Any) -> str:
    return "—" if value is None else f"{float(value):.4f}"


def _deliverable_lines(record: dict[str, Any]) -> list[str]:
    """The card's "One network" section (``handback.deliver``: distilled or souped), or nothing."""
    if record.get("kind") not in ("distilled", "soup"):
        return []
    members = record.get("members") or []
    lines = [
        "",
        "## One network",
        "",
        f"This folder holds one network, made from the study's {len(members)}-member ensemble: {record.get('how')}."
        " Every loader (timm, Hugging Face, `autotransfer.load_model`) reads this same network. The table above is"
        " its protocol (the ensemble's best member's).",
        "",
        "| model | trial | test alone |",
        "|---|---|---|",
        f"| this network ({record.get('kind')}) | — | {_score(record.get('test'))} |",
    ]
    if record.get("ensemble_test") is not None:
        lines.append(f"| the ensemble it came from | — | {_score(record.get('ensemble_test'))} |")
    lines += [f"| member {i + 1} | {m.get('trial')} | {_score(m.get('test'))} |" for i, m in enumerate(members)]
    return lines


def _self_training_lines(record: dict[str, Any]) -> list[str]:
    """The card's "Self-training" section (``tune --unlabelled``), or nothing."""
    if not record:
        return []
    offered, kept = int(record.get("offered", 0)), record.get("kept_images")
    teacher, student = record.get("teacher_val"), record.get("student_val")
    lines = [
        "",
        "## Self-training",
        "",
        f"- Unlabelled images: `{record.get('unlabelled')}`, {offered:,} offered;"
        f" {'—' if kept is None else f'{int(kept):,}'} at or above the threshold {record.get('threshold')}"
        " by the teachers (the members' protocols trained on the train split, probabilities averaged).",
        f"- Validation {record.get('metric') or 'score'} ({record.get('val_images')} images): students"
        f" {_score(student)}, teachers {_score(teacher)}. Students are kept only when strictly better.",
    ]
    if record.get("kept"):
        final = record.get("final") or {}
        lines.append(
            f"- Kept: this model's members were trained on train+val plus {int(final.get('kept_images', 0)):,}"
            " images pseudo-labelled by the train+val model, with the same protocols and step budgets"
            f" ({final.get('students')} of them; a member whose student broke stays the plain retrain)."
        )
    else:
        lines.append(f"- Not kept: {record.get('reason') or 'the teacher is handed back'}.")
    return lines


def _relative(directory: str | Path) -> str:
    """How the card names its folder: a relative path as given (``model``, ``model/members/2``),
    an absolute one by its name alone (no path of the training machine in the card)."""
    path = Path(directory)
    return path.as_posix() if not path.is_absolute() else path.name


def model_card(config: dict[str, Any], directory: str | Path) -> str:
    """The folder's ``README.md``: the Hugging Face front matter (``handback.hub_card``), what the
    model is, the data, the protocol, its scores, how to load it (with autotransfer and with timm)
    and the licences. ``directory`` names the folder in the card: pass it relative to the folder
    holding the model (an absolute path is cut to the folder's name)."""
    own = config.get("autotransfer") or {}
    settings = own.get("settings") or {}
    scores = own.get("scores") or {}
    protocol = own.get("protocol") or {}
    derived = own.get("derived") or {}
    controls = own.get("controls") or {}
    pre = config.get("pretrained_cfg") or {}
    labels = config.get("label_names") or []
    metric = own.get("metric") or "score"
    size = (pre.get("input_size") or [3, 0, 0])[-1]
    low, high = (scores.get("test_interval_95") or [None, None])[:2]
    shown_dir = _relative(directory)
    shown = ", ".join(map(str, labels[:12])) + (", ..." if len(labels) > 12 else "")
    n = settings.get("n")
    lines = [
        f"# {own.get('study') or Path(shown_dir).name}",
        "",
        f"An image classifier fine-tuned by autotransfer from `{own.get('source_spec')}`"
        f" (architecture `{config.get('architecture')}`, {own.get('library', 'timm')}) on"
        f" `{settings.get('target')}`: {len(labels)} classes ({shown}).",
        "",
        "## Data",
        "",
        f"- Dataset: `{settings.get('target')}`"
        + (f", a stratified subsample of {n} images (seed {settings.get('seed')})" if n else "")
        + f"; fingerprint `{str(own.get('dataset_fingerprint') or '')[:16]}`.",
        f"- Splits (stratified, seed {settings.get('seed')}): validation {settings.get('val_frac')},"
        f" test {settings.get('test_frac')}, the rest training. The final model was trained on"
        f" {own.get('trained_on', 'train+val')}; the test split was never trained or searched on.",
        f"- Input: {size}×{size} px RGB, resized (bicubic, shorter side) and centre-cropped, then"
        f" `(x / 255 - mean) / std` with mean {pre.get('mean')} and std {pre.get('std')}.",
        "- Class order: `label_names` in config.json (output `i` is `label_names[i]`).",
        "",
        "## Protocol",
        "",
        f"Found by an Optuna search over {settings.get('trials')} trials with a budget of"
        f" {settings.get('steps')} optimizer steps at batch {settings.get('batch_size')}"
        f" ({settings.get('optimizer')}):",
        "",
        "| parameter | value |",
        "|---|---|",
    ]
    for key in (k.name for k in PROTOCOL_KNOBS if k.name not in SCHEDULE_KNOBS):
        if key in protocol:
            lines.append(f"| {key} | {protocol[key]} |")
    lines.append(f"| schedule | {schedule_words(protocol)} |")  # written before schedules existed: one-stage
    if derived:
        lines.append(f"| lr (derived) | {float(derived.get('lr', 0)):.4g} |")
        lines.append(
            f"| frozen / re-initialised depth groups | {derived.get('freeze')} / {derived.get('reinit')}"
            f" of {derived.get('num_groups')} |"
        )
    interval = "" if low is None else f" (95% interval {low:.3f}–{high:.3f})"
    ensemble = own.get("ensemble") or {}
    if ensemble:
        k = len(ensemble.get("members") or [])
        kinds = set(ensemble.get("trained_on") or ["train+val"])
        how = (
            "each retrained on train+val"
            if kinds == {"train+val"}
            else "each the study's own trial model, trained on the train split (the time budget left no room"
            " to retrain them on train+val)"
            if kinds == {"train"}
            else "each retrained on train+val where the time budget allowed, else the trial's own model (see the table)"
        )
        lines += [
            "",
            "## Ensemble",
            "",
            f"This model is an ensemble of {k} fine-tuned networks: the study's {k} best distinct protocols by"
            f" settled validation score (the mean of each trial's last evaluations), {how}; its prediction is the"
            " mean of their softmax probabilities. The table above is the first member's protocol; each other member is a model folder"
            " of its own, with its protocol in its config.json.",
            "",
            "| member | folder | trial | validation | test alone | trained on |",
            "|---|---|---|---|---|---|",
        ]
        for i, folder in enumerate(ensemble.get("members") or []):
            row = [
                (ensemble.get(key) or [None] * k)[i]
                for key in ("trials", "member_val_scores", "member_test_scores", "trained_on")
            ]
            lines.append(f"| {i + 1} | `{folder}` | {row[0]} | {_score(row[1])} | {_score(row[2])} | {row[3]} |")
    lines += _deliverable_lines(own.get("deliverable") or {})
    lines += _self_training_lines(own.get("self_training") or {})
    lines += [
        "",
        "## Scores",
        "",
        f"- Test {metric}: **{_score(scores.get('test'))}** on {scores.get('test_images')} held-out images{interval}"
        + (" (the ensemble)." if ensemble else "."),
        f"- Validation {metric} of the chosen trial: {_score(scores.get('val'))}.",
        f"- Controls (validation): from scratch {_score(controls.get('scratch'))},"
        f" linear probe {_score(controls.get('probe'))}.",
        "",
        "Reproduce the test score: `autotransfer evaluate @@DIR@@` (no target: the study's own test split).",
        "",
        "## Load it",
        "",
        "```bash",
        "autotransfer predict @@DIR@@ image.png folder/ --top-k 3",
        "autotransfer evaluate @@DIR@@ folder:labelled-images/",
        "```",
        "",
        "```python",
        "import autotransfer",
        'model = autotransfer.load_model("@@DIR@@")',
        'model.classes_, model.predict(["image.png"]), model.predict_proba(["image.png"])',
        "```",
    ]
    lines += load_lines(config, shown_dir)
    lines += licence_lines(config)
    lines += [
        "",
        f"Written by autotransfer {(own.get('versions') or {}).get('autotransfer', '')} at {own.get('written_at')}.",
        "",
    ]
    return "\n".join(front_matter(config) + lines).replace("@@DIR@@", shown_dir)
