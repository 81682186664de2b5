"""``phonesim duplicates find|calibrate|bench``: help, one-line errors, the stored threshold and
pair model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from duplicates.cli import main
from duplicates.finder import FinderConfig
from tests.duplicates.conftest import TEST_SIZE, agreement_only_model


def test_cli_reports_errors_in_one_line(tiny_checkpoint, tmp_path, capsys) -> None:

    code = main(
        "find",
        [
            "--checkpoint",
            str(tiny_checkpoint),
            "--images",
            str(tmp_path / "none"),
            "--out",
            str(tmp_path / "r"),
            "--no-progress",
        ],
    )
    err = capsys.readouterr().err
    assert code == 2 and "no such folder" in err and "Traceback" not in err


def test_cli_end_to_end_uses_stored_threshold(planted_run, tiny_checkpoint, tmp_path, capsys):
    from duplicates.calibration import store_calibration, stored_settings
    from duplicates.descriptor import DescriptorConfig

    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, ckpt)
    store_calibration(
        ckpt, {"threshold": 0.8, "descriptor": DescriptorConfig(size=TEST_SIZE).to_json()}
    )
    stored = stored_settings(ckpt)
    assert stored.calibrated and stored.threshold == 0.8 and stored.descriptor.size == TEST_SIZE
    root = planted_run[0]
    code = main(
        "find",
        [
            "--checkpoint",
            str(ckpt),
            "--images",
            str(root),
            "--out",
            str(tmp_path / "r"),
            "--no-progress",
            "--workers",
            "0",
        ],
    )
    out = capsys.readouterr().out
    assert code == 0
    images = [p for p in root.rglob("*.*") if not p.name.startswith(".")]  # not the marker
    assert out.strip().splitlines()[-1].startswith(f"images {len(images)}, ")
    assert "(threshold 0.800, agreement score)" in out and "failed 1" in out
    assert "images/s on torch); verification:" in out and "pairs/s)" in out
    assert (tmp_path / "r" / "duplicates.html").is_file()
    # --json: the same counts by name, and nothing else on stdout
    argv = ["--checkpoint", str(ckpt), "--images", str(root), "--out", str(tmp_path / "r")]
    assert main("find", [*argv, "--no-progress", "--workers", "0", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["images"], summary["failed"], summary["threshold"]) == (len(images), 1, 0.8)
    assert summary["score"] == "agreement" and summary["groups"] > 0
    assert summary["report"]["html"] == str(tmp_path / "r" / "duplicates.html")


def test_calibrated_model_is_stored_and_used(planted_run, tiny_checkpoint, tmp_path, capsys):
    """A record holding a pair model makes the CLI score with it (and say so)."""
    from duplicates.calibration import store_calibration
    from duplicates.descriptor import DescriptorConfig

    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, ckpt)
    model = agreement_only_model(50.0, -45.0)  # p >= 0.5 exactly where agreement >= 0.9
    record = {
        "threshold": 0.5,
        "pair_model": model.to_json(),
        "descriptor": DescriptorConfig(size=TEST_SIZE).to_json(),
    }
    store_calibration(ckpt, record)
    root, planted = planted_run[0], planted_run[1]
    out = tmp_path / "r"
    argv = ["--checkpoint", str(ckpt), "--images", str(root), "--out", str(out)]
    assert main("find", [*argv, "--no-progress", "--workers", "0"]) == 0
    assert "(threshold 0.500, pair model score)" in capsys.readouterr().out
    report = json.loads((out / "duplicates.json").read_text())
    assert len(report["groups"]) == len(planted)
    # What made it: the checkpoint (hash and path), the data, and where the threshold came from.
    from embedder.checkpoint import checkpoint_hash

    made = report["made_with"]
    assert made["checkpoint_hash"] == checkpoint_hash(ckpt) and made["checkpoint"] == str(ckpt)
    assert made["data"] == str(Path(root).resolve()) and made["threshold_from"] == "calibration"
    assert made["runtime"] and made["model"] and made["created"].endswith("+00:00")
    assert main("find", [*argv, "--no-progress", "--workers", "0", "--threshold", "0.6"]) == 0
    made = json.loads((out / "duplicates.json").read_text())["made_with"]
    assert made["threshold_from"] == "--threshold"
    broken = dict(record, pair_model=dict(record["pair_model"], intercept=None))
    store_calibration(ckpt, broken)
    assert main("find", [*argv, "--no-progress", "--workers", "0"]) == 2
    err = capsys.readouterr().err
    assert "malformed" in err and "Traceback" not in err


@pytest.mark.parametrize("command", ["find", "calibrate", "bench"])
def test_phonesim_duplicates_subcommands_have_help(command, capsys) -> None:
    from phonesim.cli import main as phonesim_main

    with pytest.raises(SystemExit) as exit_:
        phonesim_main(["duplicates", command, "--help"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: phonesim duplicates {command} ")


def test_phonesim_duplicates_bench_prints_json_last(capsys) -> None:
    from phonesim.cli import main as phonesim_main

    argv = ["duplicates", "bench", "--n", "600", "--dim", "16", "--baseline-n", "300"]
    assert phonesim_main(argv) == 0
    figures = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert figures["n"] == 600 and figures["subset_matches_brute_force"]


@pytest.mark.parametrize("value", ["0", "abc", "1.5", "nan"])
def test_find_refuses_a_threshold_outside_0_to_1(tiny_checkpoint, tmp_path, value, capsys):
    """A pair that verification rejects scores 0: --threshold 0 grouped another phone with
    the copies. A bad value was named by an internal function ("invalid _unit_float value")."""
    from duplicates.cli import main

    argv = ["--checkpoint", str(tiny_checkpoint), "--data", str(tmp_path), "--out", "r"]
    with pytest.raises(SystemExit) as exit_:
        main("find", [*argv, "--threshold", value])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "--threshold" in err and "_unit_float" not in err
    with pytest.raises(ValueError, match="threshold must be above 0"):
        FinderConfig(threshold=0.0)


def test_calibrate_refuses_a_negative_blur(tiny_checkpoint, capsys) -> None:
    from duplicates.cli import main

    with pytest.raises(SystemExit) as exit_:
        main("calibrate", ["--checkpoint", str(tiny_checkpoint), "--blur", "-1"])
    assert exit_.value.code == 2
    assert "--blur" in capsys.readouterr().err


def test_calibrate_refuses_a_checkpoint_it_cannot_store_into(
    tiny_checkpoint, tmp_path, monkeypatch, capsys
):
    """A read-only checkpoint is refused before the benchmark, not after it (the OS refusal
    is injected: this test runs as root, which writes into read-only folders)."""
    from common import fsutil

    real = fsutil.folder_write_problem

    def read_only_checkpoint(folder, **kw):  # noqa: ANN001, ANN202
        if str(folder) == str(tiny_checkpoint):
            return "folder is not writable (Read-only file system)"
        return real(folder, **kw)

    monkeypatch.setattr(fsutil, "folder_write_problem", read_only_checkpoint)
    argv = ["--checkpoint", str(tiny_checkpoint), "--work", str(tmp_path / "w")]
    assert main("calibrate", argv) == 2
    err = capsys.readouterr().err
    assert "threshold cannot be stored; use --dry-run" in err
    assert not (tmp_path / "w" / "benchmark").exists()


def test_calibrate_on_too_few_photos_stores_nothing(
    tiny_checkpoint, tiny_catalog, tmp_path, capsys
):
    """Three photos made a benchmark without one negative pair: "precision 1.000", and the
    threshold replaced a good calibration, which then grouped two different phones."""
    from duplicates.calibration import store_calibration, stored_settings

    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, ckpt)
    store_calibration(ckpt, {"threshold": 0.93})  # a good calibration made before
    few = tmp_path / "few"
    few.mkdir()
    for photo in sorted(tiny_catalog.rglob("*.jpg"))[:3]:
        shutil.copy(photo, few / photo.name)
    argv = ["--checkpoint", str(ckpt), "--data", str(few), "--work", str(tmp_path / "w")]
    assert main("calibrate", [*argv, "--no-progress", "--workers", "0"]) == 1
    assert "threshold not stored" in capsys.readouterr().err
    assert stored_settings(ckpt).threshold == 0.93
    # A record this phonesim cannot read (a newer one) is kept as well, not a traceback.
    store_calibration(ckpt, {"format_version": 9, "threshold": 0.93})
    assert main("calibrate", [*argv, "--no-progress", "--workers", "0"]) == 1
    assert "threshold not stored" in capsys.readouterr().err


def test_what_calibrate_stores_is_what_find_reads(tiny_checkpoint, tiny_catalog, tmp_path, capsys):
    """A versioned record refuses settings it does not know: calibrate's own 'runtime' was one,
    so every calibrated checkpoint was refused by 'find' until it was listed."""
    from duplicates.calibration import stored_settings

    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, ckpt)
    argv = ["--checkpoint", str(ckpt), "--data", str(tiny_catalog), "--work", str(tmp_path / "w")]
    small = ["--originals", "6", "--copies", "4", "--distractors", "4", "--min-precision", "0"]
    assert main("calibrate", [*argv, *small, "--no-progress", "--workers", "0"]) == 0
    assert stored_settings(ckpt).calibrated
    find = ["--checkpoint", str(ckpt), "--images", str(tiny_catalog), "--out", str(tmp_path / "r")]
    capsys.readouterr()
    assert main("find", [*find, "--no-progress", "--workers", "0"]) == 0, capsys.readouterr().err


# Child: features memory-mapped however few, and a pause before the first image is read.
STOP_IN_EXTRACTION = """
import os, sys, time
sys.path.insert(0, {repo!r})
import duplicates.features as features
import duplicates.finder as finder
real_extract, real_read = finder.extract_features, features.iter_read
finder.extract_features = lambda *a, **k: real_extract(*a, **k, memory_limit=1)
def read_then_wait(*args, **kwargs):
    open({marker!r}, "w").close()
    time.sleep(60)
    yield from real_read(*args, **kwargs)
features.iter_read = read_then_wait
from duplicates.cli import main
sys.exit(main("find", sys.argv[1:]))
"""


def test_sigterm_stops_find_and_removes_its_memory_mapped_features(
    planted_run, tiny_checkpoint, tmp_path
):
    """SIGTERM ended the process at once and left the folder of memory-mapped features
    (over 1 GiB wherever the CLI uses one) in the system's temporary folder."""
    import os
    import sys

    from tests.export.conftest import REPO
    from tests.signals import terminate_at_marker

    marker, temp = tmp_path / "describing", tmp_path / "temp"
    temp.mkdir()
    script = tmp_path / "child.py"
    script.write_text(STOP_IN_EXTRACTION.format(repo=str(REPO), marker=str(marker)))
    args = ["--checkpoint", str(tiny_checkpoint), "--images", str(planted_run[0])]
    args += ["--out", str(tmp_path / "r"), "--no-progress", "--workers", "0"]

    def mapped() -> None:  # the run is under way, its features memory-mapped
        assert list(temp.glob("phonesim-dup-*"))

    code, stderr = terminate_at_marker(
        [sys.executable, str(script), *args],
        marker,
        timeout=120,
        at_marker=mapped,
        env={**os.environ, "TMPDIR": str(temp)},
    )
    assert code == 130, stderr
    assert list(temp.glob("phonesim-dup-*")) == []


def test_keep_catalog_without_a_catalog_is_refused(tiny_checkpoint, tmp_path, capsys):
    """It had been accepted and did nothing."""
    (tmp_path / "imgs").mkdir()
    args = ["--checkpoint", str(tiny_checkpoint), "--images", str(tmp_path / "imgs")]
    code = main("find", [*args, "--out", str(tmp_path / "r"), "--keep", "catalog,resolution"])
    assert code == 2 and "--keep catalog needs a catalog" in capsys.readouterr().err


def test_calibrate_without_the_default_dataset_says_to_give_data(
    tiny_checkpoint, tmp_path, monkeypatch, capsys
):
    """On a machine without ../shared it said only "<path>: no such folder"."""
    from duplicates import calibrate_cli

    monkeypatch.setattr(calibrate_cli, "DEFAULT_SOURCE", tmp_path / "no-shared" / "phone-brands")
    argv = ["--checkpoint", str(tiny_checkpoint), "--dry-run", "--no-progress"]
    parser_default = str(calibrate_cli.DEFAULT_SOURCE)
    assert main("calibrate", [*argv, "--data", parser_default]) == 2
    assert "give a folder of real photos with --data DIR" in capsys.readouterr().err
