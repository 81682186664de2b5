"""Flag types: what they accept, and error messages that name where a bad value came from."""

from __future__ import annotations

import argparse

import pytest

from common.argtypes import add_store_option, int_between


def _store_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="t")
    add_store_option(p)
    return p


def test_store_from_the_environment_and_its_errors(monkeypatch, capsys):
    monkeypatch.setenv("PHONESIM_STORE", "postgresql://u@db:5432/shop")
    args = _store_parser().parse_args([])
    assert args.store == "postgresql://u@db:5432/shop" and type(args.store) is str
    monkeypatch.setenv("PHONESIM_STORE", "mysql://u@db/shop")
    with pytest.raises(SystemExit):
        _store_parser().parse_args([])
    assert "(from $PHONESIM_STORE) must be a postgresql://" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # the flag wins, and its own error names no variable
        _store_parser().parse_args(["--store", "sqlite:///x"])
    assert "argument --store: must be a postgresql://" in capsys.readouterr().err
    monkeypatch.setenv("PHONESIM_STORE", "postgresql://u@db:5432/shop")
    assert _store_parser().parse_args(["--store", ""]).store is None  # no store, this once
    assert "--store '' for none" in " ".join(_store_parser().format_help().split())
    monkeypatch.delenv("PHONESIM_STORE")
    assert _store_parser().parse_args([]).store is None


def test_a_store_url_keeps_no_outer_space_and_its_errors_no_password(monkeypatch, capsys):
    """A trailing space (from a secret file) made the URL invalid, and the error printed it
    with its password."""
    monkeypatch.setenv("PHONESIM_STORE", "postgresql://u:s3cret@db:5432/shop \n")
    assert _store_parser().parse_args([]).store == "postgresql://u:s3cret@db:5432/shop"
    for bad in (
        "postgresql://u:s3cret@db:5432/my shop",
        "postgresql://u:s3 cret@db/shop",
        "postgresql+psycopg://u:s3cret@db/x",  # SQLAlchemy's spelling
        '"postgresql://u:s3cret@db/x"',  # quoted, as an env file may have it
        "POSTGRESQL://u:s3cret@db/x",
        "postgresql://u@db/x?password=s3cret&sslmode=require y",
        "host=db user=u password=s3cret",  # libpq's keyword form
    ):
        with pytest.raises(SystemExit):
            _store_parser().parse_args(["--store", bad])
        err = capsys.readouterr().err
        assert "s3" not in err and "***" in err, err


def test_the_store_help_says_the_variable_is_its_default_and_whether_it_is_set(monkeypatch):
    """Set, it turns a search within a folder into one against the store: --help says so."""
    monkeypatch.delenv("PHONESIM_STORE", raising=False)
    assert "default: $PHONESIM_STORE, when set" in " ".join(_store_parser().format_help().split())
    monkeypatch.setenv("PHONESIM_STORE", "postgresql://u@db:5432/shop")
    text = " ".join(_store_parser().format_help().split())
    assert "which is set now" in text and "shop" not in text  # never the URL (a password)


def test_int_between():
    parse = int_between(2, 96)
    assert parse("2") == 2 and parse("96") == 96
    for bad in ("1", "97", str(10**20)):
        with pytest.raises(argparse.ArgumentTypeError, match="must be 2-96"):
            parse(bad)
    with pytest.raises(ValueError):
        parse("two")


def test_progress_bars_only_for_a_person_watching(monkeypatch):
    import sys

    from common.argtypes import show_progress

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert show_progress(argparse.Namespace(no_progress=False, quiet=False))
    assert not show_progress(argparse.Namespace(no_progress=True, quiet=False))
    assert not show_progress(argparse.Namespace(no_progress=False, quiet=True))
    assert show_progress(argparse.Namespace())  # a command without either flag
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)  # a log file
    assert not show_progress(argparse.Namespace(no_progress=False, quiet=False))


def test_thread_counts_are_bounded_by_the_cores():
    """ONNX Runtime asked for 100,000 threads never finished starting (and ignored Ctrl-C)."""
    from common.argtypes import max_threads, thread_count

    assert max_threads() >= 16 and thread_count("1") == 1
    assert thread_count(str(max_threads())) == max_threads()
    for bad in ("0", str(max_threads() + 1), "100000"):
        with pytest.raises(argparse.ArgumentTypeError):
            thread_count(bad)


def test_batch_sizes_and_decode_workers_are_bounded(capsys):
    """`embed --batch-size 100000` held 16 GB in one forward pass; `--workers 1000` decoded
    the whole data set ahead of the model."""
    from common.argtypes import MAX_BATCH, batch_size, decode_workers, max_workers

    p = argparse.ArgumentParser(prog="t")
    p.add_argument("--batch-size", type=batch_size)
    p.add_argument("--workers", type=decode_workers)
    args = p.parse_args(["--batch-size", str(MAX_BATCH), "--workers", "0"])
    assert (args.batch_size, args.workers) == (MAX_BATCH, 0)
    for argv in (["--batch-size", "100000"], ["--batch-size", "0"], ["--workers", "1000"]):
        with pytest.raises(SystemExit):
            p.parse_args(argv)
        assert "must be" in capsys.readouterr().err
    assert p.parse_args(["--workers", str(max_workers())]).workers == max_workers()
