"""The phonesim command: helpful --help, one-line errors and non-zero exits on bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from PIL import Image

from phonesim.cli import main


def run(argv, capsys):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "--data", "d", "--out", "o"],
        ["evaluate", "--checkpoint", "c", "--data", "d"],
        ["embed", "--checkpoint", "c", "--data", "d", "--out", "o.h5"],
        ["export", "--checkpoint", "c", "--data", "d", "--out", "o.h5"],
        ["demo"],
        ["make-demo-catalog", "--out", "o"],
        ["duplicates", "find", "--checkpoint", "c", "--data", "d", "--out", "o"],
        ["duplicates", "calibrate", "--checkpoint", "c"],
        ["index", "build", "--embeddings", "e.h5", "--out", "o"],
    ],
)
def test_every_command_that_draws_progress_bars_takes_no_progress(argv):
    from phonesim.cli import build_parser

    assert build_parser().parse_args([*argv, "--no-progress"]).no_progress is True


def test_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for command in ("train", "evaluate", "embed", "make-demo-catalog", "index", "demo"):
        assert command in text


@pytest.mark.parametrize(
    "argv_tail,message",
    [
        (["--data", "{tmp}/missing"], "no such file"),
        (["--data", "{tmp}/empty"], "no class folders"),
        (["--data", "{tmp}/oneclass"], "at least 2"),
        (["--data", "{tmp}/hole"], "has no images"),
        (["--data", "{tmp}/bad.csv"], "missing column"),
        (["--data", "{tmp}/notes.txt"], "expected a folder"),
        (["--data", "{tmp}/ok", "--weights", "{tmp}/none.pth"], "weights file not found"),
        (["--data", "{tmp}/ok", "--weights", "{tmp}/ok"], "is a folder; give the weights file"),
        (["--data", "{tmp}/ok", "--model", "nope_model", "--weights", "none"], "unknown timm"),
        (["--data", "{tmp}/ok", "--weights", "{tmp}/notes.txt"], "cannot read weights"),
        (["--data", "{tmp}/ok", "--out", "{tmp}/ok"], "not a phonesim checkpoint"),
        (["--data", "{tmp}/ok", "--out", "{tmp}/notes.txt"], "not a folder"),
        (
            ["--data", "{tmp}/ok", "--model", "vit_tiny_patch16_224", "--weights", "none"]
            + ["--img-size", "30"],
            "cannot take 30 px input",
        ),
        (  # batch norms learning statistics from one 1x1 value per channel
            ["--data", "{tmp}/ok", "--model", "test_efficientnet", "--weights", "none"]
            + ["--img-size", "32", "--batch-size", "1"],
            "--batch-size 1 cannot train test_efficientnet's batch-norm statistics at 32 px",
        ),
    ],
)
def test_train_bad_input_is_one_line_error(tmp_path, capsys, argv_tail, message):
    (tmp_path / "empty").mkdir()
    for label in ("a", "b"):
        (tmp_path / "ok" / label).mkdir(parents=True)
        Image.new("RGB", (16, 16)).save(tmp_path / "ok" / label / "x.jpg")
    (tmp_path / "oneclass" / "a").mkdir(parents=True)
    Image.new("RGB", (16, 16)).save(tmp_path / "oneclass" / "a" / "x.jpg")
    (tmp_path / "hole" / "a").mkdir(parents=True)
    (tmp_path / "hole" / "b").mkdir(parents=True)
    Image.new("RGB", (16, 16)).save(tmp_path / "hole" / "b" / "x.jpg")
    (tmp_path / "bad.csv").write_text("path,label\nx.jpg,a\n")
    (tmp_path / "notes.txt").write_text("hi")
    argv = ["train", "--out", tmp_path / "ck"] + [a.format(tmp=tmp_path) for a in argv_tail]
    code, _, err = run(argv, capsys)
    assert code == 2
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize(
    "flag,value,message",
    [
        ("--val-fraction", "1", "must be in [0, 1)"),  # 1 would leave nothing to train on
        ("--lr", "-1", "must be a positive number"),
        ("--head-lr", "nan", "must be a positive number"),
        ("--label-smoothing", "2", "must be in [0, 1)"),
        ("--augment", "3", "must be in [0, 1]"),
        ("--weight-decay", "-1", "must be 0 or more"),
        ("--drop-rate", "1", "must be in [0, 1)"),
        ("--frozen-groups", "-2", "must be 0 or more"),
        ("--epochs", "-1", "must be 0 or more"),
        ("--conflict-similarity", "0", "must be in (0, 1]"),
    ],
)
def test_train_out_of_range_numbers_are_usage_errors(tmp_path, capsys, flag, value, message):
    """Refused while parsing, before any data is read: exit 2 and a line naming the flag."""
    argv = ["train", "--data", str(tmp_path), "--out", str(tmp_path / "ck"), flag, value]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2
    assert f"argument {flag}: {message}" in err and "Traceback" not in err


def test_train_never_writes_over_a_folder_that_is_not_a_checkpoint(tmp_path, capsys):
    for label in ("a", "b"):
        (tmp_path / "ok" / label).mkdir(parents=True)
        Image.new("RGB", (16, 16)).save(tmp_path / "ok" / label / "x.jpg")
    (tmp_path / "ok" / "notes.txt").write_text("keep me")
    code, _, err = run(["train", "--data", tmp_path / "ok", "--out", tmp_path / "ok"], capsys)
    assert code == 2 and "not a phonesim checkpoint" in err
    assert (tmp_path / "ok" / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize("workers", ["-1", "1000"])
@pytest.mark.parametrize("command", ["train", "embed"])
def test_workers_out_of_range_are_a_usage_error(command, workers, tmp_path, capsys):
    argv = [command, "--data", tmp_path, "--out", tmp_path / "x", "--workers", workers]
    if command == "embed":
        argv += ["--checkpoint", tmp_path]
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in argv])
    assert exc.value.code == 2
    assert "must be 0 to" in capsys.readouterr().err


def test_evaluate_and_embed_via_cli(tiny_checkpoint, tiny_catalog, tmp_path, capsys):
    code, out, _ = run(
        [
            "evaluate",
            "--checkpoint",
            tiny_checkpoint,
            "--data",
            tiny_catalog,
            "--json",
            "--out",
            tmp_path / "ev",
        ],
        capsys,
    )
    assert code == 0
    report = json.loads(out)
    assert {"accuracy", "macro_f1", "recall_at_1", "recall_at_5"} <= report.keys()
    code, out, _ = run(
        [
            "embed",
            "--checkpoint",
            tiny_checkpoint,
            "--data",
            tiny_catalog / "catalog.csv",
            "--out",
            tmp_path / "e.h5",
            "--workers",
            "0",
        ],
        capsys,
    )
    assert code == 0 and "embedded 18 images (0 failed)" in out


def test_missing_checkpoint_is_one_line_error(tiny_catalog, tmp_path, capsys):
    code, _, err = run(
        ["evaluate", "--checkpoint", tmp_path / "nope", "--data", tiny_catalog], capsys
    )
    assert code == 2 and "checkpoint folder not found" in err
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"x")
    code, _, err = run(["evaluate", "--checkpoint", weights, "--data", tiny_catalog], capsys)
    assert code == 2 and "is a file; give the checkpoint folder that holds it" in err


def test_a_missing_checkpoint_says_how_one_is_made(tiny_checkpoint, tiny_catalog, tmp_path, capsys):
    """A first `make serve` before `make demo`, or the demo's folder given for its checkpoint,
    had said only what was wrong, not what to do."""
    import shutil

    argv = ["evaluate", "--data", tiny_catalog, "--checkpoint"]
    code, _, err = run([*argv, tmp_path / "nope"], capsys)
    assert code == 2 and "'phonesim train' makes one" in err
    shutil.copytree(tiny_checkpoint, tmp_path / "run" / "checkpoint")
    code, _, err = run([*argv, tmp_path / "run"], capsys)
    assert code == 2 and f"the checkpoint may be {tmp_path / 'run' / 'checkpoint'}" in err


def _refused(argv, capsys) -> str:
    """argparse's answer to a bad flag: exit 2 and the message on stderr."""
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in argv])
    assert exc.value.code == 2
    return capsys.readouterr().err


def test_make_demo_catalog_bad_args(tmp_path, capsys):
    for command in (["make-demo-catalog", "--out"], ["demo", "--no-serve", "--workdir"]):
        err = _refused([*command, tmp_path / "d", "--classes", "1"], capsys)
        assert "--classes: must be 2-96, got 1" in err
        assert not (tmp_path / "d").exists()  # refused before anything is written


def test_console_script_exit_code_without_traceback(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "phonesim",
            "embed",
            "--checkpoint",
            str(tmp_path),
            "--data",
            str(tmp_path),
            "--out",
            str(tmp_path / "x.h5"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "phonesim: error:" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "argv",
    [
        ["evaluate", "--checkpoint", "{tmp}/ck", "--data", "{tmp}/ok", "--out", "{tmp}/ok"],
        [
            "duplicates",
            "find",
            "--checkpoint",
            "{tmp}/ck",
            "--data",
            "{tmp}/ok",
            "--out",
            "{tmp}/ok",
        ],
        ["duplicates", "calibrate", "--checkpoint", "{tmp}/ck", "--data", "{tmp}/ok"]
        + ["--work", "{tmp}/ok"],
    ],
)
def test_reports_never_go_into_a_folder_of_other_files(tmp_path, capsys, argv):
    """evaluate's confusion_matrix.png in the data folder made the next evaluate of it fail
    ("an image beside the class folders"), and calibrate replaced a benchmark/images there."""
    for label in ("a", "b"):
        (tmp_path / "ok" / label).mkdir(parents=True)
        Image.new("RGB", (16, 16)).save(tmp_path / "ok" / label / "x.jpg")
    before = sorted(p.relative_to(tmp_path).as_posix() for p in (tmp_path / "ok").rglob("*"))
    code, _, err = run([a.format(tmp=tmp_path) for a in argv], capsys)
    assert code == 2 and "which this command does not write" in err and "Traceback" not in err
    after = sorted(p.relative_to(tmp_path).as_posix() for p in (tmp_path / "ok").rglob("*"))
    assert after == before


def test_ctrl_c_while_the_commands_load_is_one_line(monkeypatch, capsys):
    """Ctrl-C in the first moment (the commands' imports) printed a traceback."""
    from phonesim import cli as phonesim_cli

    def interrupted():  # noqa: ANN202
        raise KeyboardInterrupt

    monkeypatch.setattr(phonesim_cli, "build_parser", interrupted)
    assert phonesim_cli.main(["index", "info"]) == 130
    assert capsys.readouterr().err == "phonesim: interrupted\n"


@pytest.mark.parametrize(
    "argv",
    [
        ["index", "query", "--image", "{tmp}/q.jpg", "--checkpoint", "{tmp}/c"],
        ["index", "info"],
        ["serve", "--checkpoint", "{tmp}/c"],
        ["export", "--checkpoint", "{tmp}/c", "--data", "{tmp}", "--out", "{tmp}/o.h5"],
        ["duplicates", "find", "--checkpoint", "{tmp}/c", "--data", "{tmp}", "--out", "{tmp}/r"],
        ["index", "remove", "--id", "x"],
    ],
)
def test_a_folder_beside_the_store_of_phonesim_store_is_refused(
    argv, tmp_path, monkeypatch, capsys
):
    """With $PHONESIM_STORE set, `index query --index DIR` had answered from the shared store's
    items without a word, and so had info, serve, export and duplicates: only the index
    operations refused it."""
    monkeypatch.setenv("PHONESIM_STORE", "postgresql://u@127.0.0.1:9/shop")  # nothing listens
    folder = tmp_path / "ix"
    argv = [a.format(tmp=tmp_path) for a in argv] + ["--index", str(folder)]

    def refusal(extra: list[str]) -> str:
        try:  # the index operations refuse it as a usage error of their parser
            code = main([*argv, *extra])
        except SystemExit as e:
            code = e.code
        err = capsys.readouterr().err
        assert code == 2, err
        return err

    err = refusal([])
    assert f"--index {folder}: $PHONESIM_STORE is set" in err and "--store ''" in err
    assert "not both" in refusal(["--store", "postgresql://h/d"])


def test_version_is_the_installed_packages(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert (
        exc.value.code == 0 and capsys.readouterr().out.strip() == f"phonesim {version('phonesim')}"
    )


def test_an_export_without_neighbours_reads_no_catalog_so_refuses_none(
    tmp_path, monkeypatch, capsys
):
    """--neighbors 0 reads neither --index nor the store: a folder beside $PHONESIM_STORE is
    no ambiguity there (docs/export.md says neither is read)."""
    monkeypatch.setenv("PHONESIM_STORE", "postgresql://u@127.0.0.1:9/shop")
    argv = [
        "export",
        "--checkpoint",
        tmp_path / "c",
        "--data",
        tmp_path,
        "--out",
        tmp_path / "o.h5",
    ]
    code, _, err = run([*argv, "--index", tmp_path / "ix", "--neighbors", "0"], capsys)
    assert code == 2 and "checkpoint folder not found" in err and "PHONESIM_STORE" not in err


@pytest.mark.parametrize("utf8_mode", ["0", "1"])
def test_a_locale_without_utf8_is_said_once(utf8_mode, tmp_path):
    """``LC_ALL=C PYTHONUTF8=0`` left photos out as "not UTF-8 text" without saying why."""
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    env = {**os.environ, "LC_ALL": "C", "PYTHONUTF8": utf8_mode, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-m", "phonesim.cli", "index", "info", "--index", str(tmp_path / "x")],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    warned = [line for line in done.stderr.splitlines() if "not UTF-8" in line]
    if utf8_mode == "0":
        assert len(warned) == 1 and "set PYTHONUTF8=1 or LC_ALL=C.UTF-8" in warned[0]
    else:
        assert warned == []
    assert "index folder does not exist" in done.stderr  # the command still ran


def test_the_locale_warning_is_said_once_by_a_serve_that_re_executes_itself(tmp_path):
    """``serve --api-key`` starts itself again without the key on its command line: the
    warning was printed by both."""
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    env = {**os.environ, "LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONPATH": str(REPO)}
    env.pop("PHONESIM_LOCALE_WARNED", None)
    argv = ["serve", "--api-key", "k" * 24, "--checkpoint", str(tmp_path / "no-ckpt")]
    done = subprocess.run(
        [sys.executable, "-m", "phonesim.cli", *argv, "--index", str(tmp_path / "no-index")],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert "Restarting with the key in the environment" in done.stderr  # it did re-execute
    assert sum("not UTF-8" in line for line in done.stderr.splitlines()) == 1, done.stderr
    assert done.returncode == 2
