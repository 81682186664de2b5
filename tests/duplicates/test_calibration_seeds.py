"""Calibration over several seeds: the seed list flag, the summary, and a whole CLI run."""

from __future__ import annotations

import argparse
import json
import shutil

import pytest

from duplicates.calibration_seeds import format_summary, parse_seeds, seed_summary
from duplicates.cli import main


def test_parse_seeds_accepts_ranges_and_lists() -> None:
    assert parse_seeds("0-4") == (0, 1, 2, 3, 4)
    assert parse_seeds("3") == (3,)
    assert parse_seeds("0-2, 9,1") == (0, 1, 2, 9)  # duplicates dropped, order kept


@pytest.mark.parametrize("text", ["", "a", "4-2", "-1", "1-", "0-200"])
def test_parse_seeds_refuses_bad_lists(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_seeds(text)


class _Sweep:
    def __init__(self, f1: float) -> None:
        self.f1 = f1

    def best_f1(self) -> int:
        return 0

    def row(self, idx: int) -> dict[str, float]:
        return {"threshold": 0.5, "precision": 0.9, "recall": 0.9, "f1": self.f1}


class _Result:
    """The fields of a CalibrationResult the summary reads."""

    def __init__(self, chosen, agreement, best_f1: float) -> None:
        self.chosen, self.agreement_chosen = chosen, agreement
        self.sweep = _Sweep(best_f1)
        self.false_pairs = [{}] * 3
        self.images, self.truth_pairs = 100, 60
        self.timing = {"describe_images_per_s": 10.0, "verify_pairs_per_s": 50.0}


def _point(p: float, r: float) -> dict[str, float]:
    return {"threshold": 0.8, "precision": p, "recall": r, "f1": 2 * p * r / (p + r)}


def test_seed_summary_reports_mean_min_and_spread() -> None:
    runs = [
        (0, _Result(_point(0.96, 0.90), _point(0.95, 0.80), 0.93), 1.0),
        (1, _Result(_point(0.95, 0.70), _point(0.96, 0.60), 0.85), 1.0),
        (2, _Result(None, None, 0.70), 1.0),  # no threshold reaches the floor: F1 counts as 0
    ]
    s = seed_summary(runs, 0.95)
    f1 = [r["f1"] for r in s["per_seed"]]
    assert f1[2] == 0.0 and s["per_seed"][2]["threshold"] is None
    assert s["f1"]["min"] == 0.0 and s["f1"]["max"] == round(max(f1), 4)
    assert s["f1"]["mean"] == pytest.approx(sum(f1) / 3, abs=1e-4)
    assert s["f1"]["std"] > 0.3 and s["seeds_reaching_precision"] == 2
    assert s["agreement_f1"]["mean"] < s["f1"]["mean"]
    table = format_summary(s)
    assert "none" in table and "2/3 seeds" in table
    json.dumps(s)  # the JSON line of the command


def test_calibrate_several_seeds_prints_each_and_ends_with_json(
    tiny_catalog, tiny_checkpoint, tmp_path, capsys
) -> None:
    args = ["--checkpoint", str(tiny_checkpoint), "--data", str(tiny_catalog)]
    args += ["--work", str(tmp_path / "w"), "--originals", "6", "--seeds", "1-2"]
    args += ["--min-precision", "0", "--workers", "0", "--no-progress"]
    code = main("calibrate", args)
    out = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(out[-1])
    assert code == 0 and summary["seeds"] == [1, 2]
    assert [r["seed"] for r in summary["per_seed"]] == [1, 2]
    assert all(0 <= r["f1"] <= 1 for r in summary["per_seed"])
    assert any(line.startswith("mean") for line in out)
    for seed in (1, 2):
        assert (tmp_path / "w" / f"seed-{seed}" / "false_pairs.csv").is_file()
    # Several seeds store nothing in the checkpoint.
    assert "duplicates" not in json.loads((tiny_checkpoint / "config.json").read_text())["extra"]


def test_calibrate_one_seed_ends_with_json_too(
    tiny_catalog, tiny_checkpoint, tmp_path, capsys
) -> None:
    """One seed had ended with the summary sentence only; a run could not be compared."""
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, ckpt)
    args = ["--checkpoint", str(ckpt), "--data", str(tiny_catalog), "--originals", "6"]
    args += ["--work", str(tmp_path / "w"), "--seed", "3", "--min-precision", "0"]
    code = main("calibrate", [*args, "--workers", "0", "--no-progress"])
    figures = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0 and figures["seed"] == 3 and figures["stored"] is True
    assert figures["baseline"] == "agreement" and figures["agreement_only"] is not None
    assert 0 <= figures["chosen"]["f1"] <= 1
    ratio = figures["chosen"]["f1"] / figures["agreement_only"]["f1"]
    assert figures["f1_over_agreement"] == pytest.approx(ratio, abs=1e-4)
    stored = json.loads((ckpt / "config.json").read_text())["extra"]["duplicates"]
    assert stored["threshold"] == figures["chosen"]["threshold"]


def test_seed_and_seeds_are_exclusive(tiny_checkpoint, capsys) -> None:
    with pytest.raises(SystemExit):
        main("calibrate", ["--checkpoint", str(tiny_checkpoint), "--seed", "1", "--seeds", "1-2"])
    assert "not allowed with" in capsys.readouterr().err
