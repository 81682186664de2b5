"""The export command line: resuming after SIGKILL and Ctrl-C, one-line errors, help."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from export import ExportConfig, ExportError, export_features
from export import cli as export_cli
from export.reader import read_inputs
from export.shards import ShardWriter, partial_path
from tests.export.conftest import REPO, _read

SCRIPT = REPO / "scripts" / "export_features.py"


KILLER = textwrap.dedent(
    """
    import os, signal, sys
    sys.path.insert(0, {repo!r})
    import common.fsutil as fsutil  # where every atomic rename happens

    real_replace, commits = os.replace, []

    def replace_then_die(src, dst):
        if os.path.basename(str(dst)).startswith("shard-"):
            commits.append(dst)
            if len(commits) == 3:  # third shard: written to its temp name, never renamed
                os.kill(os.getpid(), signal.SIGKILL)
        return real_replace(src, dst)

    fsutil.os.replace = replace_then_die
    from export.cli import main
    sys.exit(main(sys.argv[1:]))
    """
)


def test_resume_after_sigkill_writes_each_id_once(reference, demo, ckpt, tmp_path):
    out = tmp_path / "features.h5"
    args = [
        "--checkpoint", str(ckpt), "--manifest", str(demo / "with_bad.csv"), "--out", str(out),
        "--neighbors", "4", "--batch-size", "2", "--shard-size", "4", "--workers", "0",
    ]  # fmt: skip
    killer = tmp_path / "killer.py"
    killer.write_text(KILLER.format(repo=str(REPO)))
    first = subprocess.run([sys.executable, str(killer), *args], capture_output=True, text=True)
    assert first.returncode == -signal.SIGKILL, first.stderr
    partial = partial_path(out)
    assert not out.exists()
    assert len(list(partial.glob("shard-*.h5"))) == 2 and len(list(partial.glob("*.tmp"))) == 1

    second = subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, cwd=tmp_path
    )
    assert second.returncode == 0, second.stderr
    assert "resumed after 8 inputs" in second.stdout
    data, ref = _read(out), _read(reference)
    assert data["ids"] == ref["ids"] and len(set(data["ids"])) == len(data["ids"])
    assert data["failed"] == ["bad-0001"] and data["attrs"]["count"] == len(ref["ids"])
    np.testing.assert_allclose(data["emb"], ref["emb"], atol=1e-5)
    assert np.array_equal(data["nb_rows"], ref["nb_rows"])
    assert not partial.exists()


def test_ctrl_c_then_rerun_resumes(demo, ckpt, tmp_path, monkeypatch, capsys):
    out = tmp_path / "features.h5"
    argv = [
        "--checkpoint", str(ckpt), "--images", str(demo), "--out", str(out),
        "--batch-size", "3", "--shard-size", "6", "--workers", "0", "--neighbors", "2",
    ]  # fmt: skip
    real_write, calls = ShardWriter.write, []

    def interrupt_on_fifth(self, batch):
        calls.append(batch.start)
        if len(calls) == 5:
            raise KeyboardInterrupt
        real_write(self, batch)

    monkeypatch.setattr(ShardWriter, "write", interrupt_on_fifth)
    assert export_cli.main(argv) == 130
    assert "run the same command again to resume" in capsys.readouterr().err
    assert not out.exists() and partial_path(out).is_dir()
    monkeypatch.setattr(ShardWriter, "write", real_write)
    assert export_cli.main(argv) == 0
    assert "resumed after 12 inputs" in capsys.readouterr().out
    data = _read(out)
    expected = [s.id for s in read_inputs(demo, "images").samples if s.id != "broken"]
    # broken.jpg lies beside the class folders: read (unlabelled), and it fails.
    assert data["ids"] == expected and data["failed"] == ["broken"]


def test_a_resume_after_the_embedding_records_the_runtime_that_embedded(
    demo, ckpt, tmp_path, monkeypatch, capsys
):
    """Stopped in the neighbour pass, the resume embeds nothing: the file still names the
    runtime of the rows (it said "auto", the flag's value), and the summary too."""
    import h5py

    from export import job

    out = tmp_path / "features.h5"
    argv = [
        "--checkpoint", str(ckpt), "--images", str(demo), "--out", str(out),
        "--workers", "0", "--neighbors", "2", "--runtime", "torch",
    ]  # fmt: skip
    real = job.write_neighbors

    def interrupt(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise KeyboardInterrupt

    monkeypatch.setattr(job, "write_neighbors", interrupt)
    assert export_cli.main(argv) == 130
    assert "progress is kept in" in capsys.readouterr().err
    monkeypatch.setattr(job, "write_neighbors", real)
    assert export_cli.main([*argv[:-2], "--runtime", "auto"]) == 0
    assert "torch, resumed after" in capsys.readouterr().out
    with h5py.File(out) as h5:
        assert h5.attrs["runtime"] == "torch"


def test_ctrl_c_before_the_first_shard_says_nothing_is_kept(
    demo, ckpt, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "features.h5"

    def interrupt(self, batch):  # noqa: ANN001, ANN202
        raise KeyboardInterrupt

    monkeypatch.setattr(ShardWriter, "write", interrupt)
    argv = ["--checkpoint", str(ckpt), "--images", str(demo), "--out", str(out), "--workers", "0"]
    assert export_cli.main(argv) == 130
    assert "before any progress was kept" in capsys.readouterr().err  # it said "kept in"
    assert not partial_path(out).exists()


def test_cli_reports_errors_in_one_line(demo, ckpt, tmp_path, capsys):
    code = export_cli.main(
        ["--checkpoint", str(tmp_path / "nope"), "--images", str(demo),
         "--out", str(tmp_path / "f.h5")]
    )  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(
        f"export_features: error: {tmp_path / 'nope'}: checkpoint folder not found; "
    )
    with pytest.raises(ExportError, match="needs a folder"):
        export_features(
            ExportConfig(str(ckpt), str(demo / "three.csv"), str(tmp_path / "f.h5"),
                         input_kind="images")
        )  # fmt: skip


def test_ray_options_without_ray_are_refused(demo, ckpt, tmp_path, capsys):
    """Silently ignored, --ray-actors 3 would run one process and look like a slow cluster."""
    base = ["--checkpoint", str(ckpt), "--images", str(demo), "--out", str(tmp_path / "f.h5")]
    for extra in (
        ["--ray-actors", "3"],
        ["--ray-cpus-per-actor", "2"],
        ["--ray-cpus-per-actor", "1"],  # the default's value, but given: still a mistake
        ["--ray-no-ship-code"],
    ):
        assert export_cli.main([*base, *extra]) == 2
        assert f"{extra[0]} apply to a Ray run only" in capsys.readouterr().err
    assert not (tmp_path / "f.h5").exists()


def test_class_rerank_without_neighbours_names_the_flags(demo, ckpt, tmp_path, capsys):
    """The message had named both the flags and the Python fields: "--class-rerank
    (class_rerank) ... --neighbors (neighbors) above 0"."""
    base = ["--checkpoint", str(ckpt), "--images", str(demo), "--out", str(tmp_path / "f.h5")]
    assert export_cli.main([*base, "--neighbors", "0", "--class-rerank", "0.1"]) == 2
    err = capsys.readouterr().err
    assert "--class-rerank orders neighbours: it needs --neighbors above 0" in err
    assert "(class_rerank)" not in err


def test_cli_help_lists_the_options():
    text = export_cli.build_parser().format_help()
    for flag in ("--checkpoint", "--images", "--manifest", "--index", "--neighbors", "--dtype",
                 "--class-rerank", "--ray", "docs/export.md"):  # fmt: skip
        assert flag in text
    base = ["--checkpoint", "c", "--images", "i", "--out", "o"]
    default = export_cli.config_from_args(export_cli.build_parser().parse_args(base))
    assert default.class_rerank == 0.0  # similarity order unless asked
    asked = export_cli.build_parser().parse_args([*base, "--class-rerank", "0.1"])
    assert export_cli.config_from_args(asked).class_rerank == 0.1
    with pytest.raises(SystemExit):
        export_cli.build_parser().parse_args([*base, "--class-rerank", "-1"])
    with pytest.raises(SystemExit):
        export_cli.build_parser().parse_args(["--checkpoint", "c", "--out", "o"])
    with pytest.raises(SystemExit):  # refused before any embedding, not an OverflowError after
        export_cli.build_parser().parse_args([*base, "--neighbors", str(10**20)])
    top = export_cli.build_parser().parse_args([*base, "--neighbors", "10000"])
    assert export_cli.config_from_args(top).neighbors == 10_000


def test_the_summary_says_when_items_got_fewer_neighbours_than_asked(demo, ckpt, tmp_path, capsys):
    """It printed "5 neighbours" for a catalog of three, where each item has two."""
    argv = [
        "--checkpoint", str(ckpt), "--data", str(demo / "three.csv"), "--workers", "0",
        "--runtime", "torch", "--out",
    ]  # fmt: skip
    assert export_cli.main([*argv, str(tmp_path / "a.h5"), "--neighbors", "5"]) == 0
    assert "5 neighbours asked, as few as 2 found" in capsys.readouterr().out
    assert export_cli.main([*argv, str(tmp_path / "b.h5"), "--neighbors", "2"]) == 0
    out = capsys.readouterr().out
    assert "2 neighbours," in out and "asked" not in out


def test_an_image_replaced_while_its_batch_was_embedded_is_refused_on_resume(
    demo, ckpt, tmp_path, monkeypatch, capsys
):
    """The files were stamped after their batch was embedded: a photo replaced in between
    was recorded as the new file beside the old photo's embedding, and a resume kept it."""
    import shutil

    images = tmp_path / "images"
    shutil.copytree(demo, images)
    out = tmp_path / "features.h5"
    argv = [
        "--checkpoint", str(ckpt), "--images", str(images), "--out", str(out),
        "--batch-size", "3", "--shard-size", "3", "--workers", "0", "--neighbors", "2",
    ]  # fmt: skip
    samples = read_inputs(images, "images").samples
    victim, other = samples[1], samples[-2]
    real_write, calls = ShardWriter.write, []

    def replace_then_stop(self, batch):
        calls.append(batch.start)
        if len(calls) == 1:  # read and embedded; its photo is replaced before it is written
            victim.path.write_bytes(other.path.read_bytes())
        if len(calls) == 2:
            raise KeyboardInterrupt
        real_write(self, batch)

    monkeypatch.setattr(ShardWriter, "write", replace_then_stop)
    assert export_cli.main(argv) == 130
    capsys.readouterr()
    monkeypatch.setattr(ShardWriter, "write", real_write)
    assert export_cli.main(argv) == 2
    err = capsys.readouterr().err
    assert (
        "1 image file(s) changed since the export that embedded them read them" in err
        and repr(victim.id) in err
    )
