"""Candidate scoring: ranking and dominance (pure), two real models on digits, and the CLI."""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import pytest

from autotransfer.backbones import offline_zoo, parse_models
from autotransfer.core.errors import UserError
from autotransfer.data import load_dataset, stratified_subsample
from autotransfer.estimate.candidates import THROUGHPUT_STEPS, dominators, rank_order, score_candidates

# ---- pure ranking and dominance -------------------------------------------------------------


def test_rank_order_is_best_first_ties_to_the_cheaper_missing_last():
    assert rank_order([-0.5, -0.1, None, -0.3]) == [1, 3, 0, 2]
    assert rank_order([-0.2, -0.2, -0.2], costs=[3.0, 1.0, 2.0]) == [1, 2, 0]
    assert rank_order([float("nan"), -1.0]) == [1, 0]
    assert rank_order([]) == []
    with pytest.raises(ValueError, match="one value per score"):
        rank_order([1.0, 2.0], costs=[1.0])


def test_dominators_need_a_higher_score_and_a_lower_cost():
    # scores (higher better) and costs (seconds per image, lower better)
    scores = [-0.1, -0.3, -0.2, -0.4, None]
    costs = [2.0, 3.0, 1.0, 0.5, 9.0]
    # 0 has the best score: kept; 1 is beaten by 0 and by 2 (each better and cheaper): the
    # best-scoring dominator is named; 2 is cheaper than 0: kept; 3 is the cheapest: kept;
    # 4 has no score: never dominated
    assert dominators(scores, costs) == [None, 0, None, None, None]
    # equal on either axis is not domination
    assert dominators([-0.1, -0.1], [1.0, 2.0]) == [None, None]
    assert dominators([-0.1, -0.2], [1.0, 1.0]) == [None, None]
    assert dominators([-0.1, -0.2], [1.0, 2.0]) == [None, 0]
    with pytest.raises(ValueError, match="one value per score"):
        dominators([1.0], [1.0, 2.0])


# ---- model names ----------------------------------------------------------------------------


def test_parse_models_expands_auto_and_names_a_bad_model():
    zoo = offline_zoo()
    assert {"efficientnet_lite0", "fashion-source"} <= set(zoo)
    assert parse_models("auto") == zoo
    assert parse_models(" fashion-source , efficientnet_lite0,fashion-source") == [
        "fashion-source",
        "efficientnet_lite0",
    ]
    assert parse_models("fashion-source,auto")[0] == "fashion-source" and len(
        parse_models("fashion-source,auto")
    ) == len(zoo)
    with pytest.raises(UserError, match="'nosuch'"):
        parse_models("fashion-source,nosuch")
    with pytest.raises(UserError, match="comma-separated"):
        parse_models("fashion-source,,efficientnet_lite0")


# ---- real models ----------------------------------------------------------------------------


def test_two_models_on_digits_get_sane_evidence_best_nleep_first():
    target = stratified_subsample(load_dataset("builtin:digits"), 50, seed=0)
    lines: list[str] = []
    result = score_candidates(
        target,
        ["fashion-source", "efficientnet_lite0"],
        resolution=32,
        batch_size=8,
        max_images=50,
        log=lines.append,
    )
    assert result.images == 50 and result.classes == 10 and result.resolution == 32 and result.device == "cpu"
    assert {c.model for c in result.candidates} == {"fashion-source", "efficientnet_lite0"}
    assert len(lines) == 2 and all("img/s" in line for line in lines)
    nleeps = [c.nleep for c in result.candidates]
    assert nleeps == sorted(nleeps, reverse=True)  # best first
    for c in result.candidates:
        assert c.params > 1_000_000 and c.num_groups >= 4
        assert c.nleep <= 0.0 and c.leep <= 0.0  # both have a source head
        assert math.isfinite(c.logme) and math.isfinite(c.logme_over_chance) and math.isfinite(c.hscore)
        assert 0.0 <= c.similarity <= 1.0 and c.divergence == "bn-w2" and c.divergence_excess >= 0.0
        assert c.images_per_s > 0.0 and c.throughput_images == 8 * (THROUGHPUT_STEPS - 1)
        assert 0.0 < c.estimate_s <= result.seconds
        # dominated exactly when the other one is better on NLEEP and faster
        other = next(o for o in result.candidates if o is not c)
        beaten = other.nleep > c.nleep and other.images_per_s > c.images_per_s
        assert c.kept is not beaten
        assert (c.reason is not None and other.model in c.reason) is beaten
    assert sum(c.estimate_s for c in result.candidates) <= result.seconds
    # the greyscale laboratory (Fashion-MNIST) is nearer to digits than ImageNet is (BN statistics),
    # and its 5-group ResNet trains faster at 32 px than EfficientNet-Lite0
    by_name = {c.model: c for c in result.candidates}
    assert by_name["fashion-source"].similarity > by_name["efficientnet_lite0"].similarity
    assert by_name["fashion-source"].images_per_s > by_name["efficientnet_lite0"].images_per_s
    payload = json.loads(json.dumps(result.to_dict()))
    assert [c["model"] for c in payload["candidates"]] == [c.model for c in result.candidates]
    assert payload["kept"] == [c.model for c in result.kept]


def test_score_candidates_refuses_bad_settings():
    target = stratified_subsample(load_dataset("builtin:digits"), 20, seed=0)
    with pytest.raises(UserError, match="at least one model"):
        score_candidates(target, [])
    with pytest.raises(UserError, match="resolution"):
        score_candidates(target, ["fashion-source"], resolution=4)


# ---- CLI ------------------------------------------------------------------------------------


def _run(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    from autotransfer.cli import main

    monkeypatch.setattr(sys, "argv", ["autotransfer", "estimate", *args])
    code = 0
    try:
        main()
    except SystemExit as done:
        code = int(done.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_models_json_lists_the_candidates(monkeypatch, capsys):
    code, out, err = _run(
        monkeypatch, capsys, "builtin:digits", "--models", "fashion-source", "--n", "40", "--max-images", "40",
        "--format", "json",
    )  # fmt: skip
    assert code == 0, err
    payload = json.loads(out)
    assert payload["resolution"] == 64 and payload["batch_size"] == 32  # the study's CPU defaults
    [row] = payload["candidates"]
    assert row["model"] == "fashion-source" and row["kept"] is True
    assert row["nleep"] <= 0.0 and row["images_per_s"] > 0 and row["params"] > 0
    assert "fashion-source: NLEEP" in err  # progress on stderr, stdout is only the JSON


@pytest.mark.parametrize(
    "args,expected",
    [
        (("--models", "fashion-source,nosuch"), "unknown model 'nosuch'"),
        (("--model", "auto", "--models", "fashion-source"), "not both"),
        (("--models", "fashion-source", "--source", "builtin:digits"), "--source applies to one model"),
    ],
)
def test_cli_bad_model_list_is_one_line_exit_2(monkeypatch, capsys, args, expected):
    code, out, err = _run(monkeypatch, capsys, "builtin:digits", *args)
    assert code == 2 and out == ""
    err = err.strip()
    assert expected in err and "\n" not in err and "Traceback" not in err


def test_cli_models_table_on_stdout(monkeypatch, capsys):
    code, out, err = _run(monkeypatch, capsys, "builtin:digits", "--models", "fashion-source", "--n", "30")
    assert code == 0, err
    assert "candidates on builtin:digits" in out and "fashion-source" in out and "NLEEP" in out
    row = next(line for line in out.splitlines() if "fashion-source" in line and "│" in line)
    assert row.rstrip(" │").endswith("yes") and np.isfinite(float(row.split("│")[2]))
