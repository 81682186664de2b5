"""``phonesim serve`` flags parse once into the app's and the process's settings."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from common.errors import UserError
from phonesim.cli import build_parser
from server import cli
from server.config import API_KEY_ENV, GunicornSettings, ServerConfig


def parse(*argv: str):
    return build_parser().parse_args(["serve", "--checkpoint", "c", "--index", "i", *argv])


def test_serve_is_a_phonesim_subcommand():
    args = parse()
    assert args.func is cli.run
    assert (args.host, args.port, args.workers, args.threads) == ("127.0.0.1", 8000, 1, 8)
    for bad in ("99999", "0"):  # 0: a port picked at random, which no client could know
        with pytest.raises(SystemExit):
            parse("--port", bad)


def test_workers_are_bounded_by_the_cores(capsys):
    """`--workers 1000` forked until the machine ran out of memory (each worker holds a
    model), and the master, busy forking, did not stop on SIGTERM."""
    from common.argtypes import max_workers

    assert parse("--workers", str(max_workers())).workers == max_workers() >= 8
    with pytest.raises(SystemExit):
        parse("--workers", "1000")
    assert "must be 1 to" in capsys.readouterr().err


def test_flags_become_one_server_config_and_gunicorn_settings(monkeypatch, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b" / "c").mkdir(parents=True)
    monkeypatch.delenv(API_KEY_ENV, raising=False)
    config, settings = cli.settings_from_args(
        parse(
            "--workers", "3", "--threads", "2", "--max-upload-mb", "2.5", "--max-batch", "4",
            "--max-wait-ms", "3", "--image-root", f"{tmp_path}/a",
            "--image-root", f"{tmp_path}/b/c", "--image-dir", f"{tmp_path}/up",
            "--faiss-threads", "2",
            "--access-log",
        )
    )  # fmt: skip
    assert config == ServerConfig(
        checkpoint="c",
        index="i",
        max_upload_mb=2.5,
        max_batch=4,
        max_wait_ms=3.0,
        image_dir=f"{tmp_path}/up",
        image_roots=(f"{tmp_path}/a", f"{tmp_path}/b/c"),
    )
    assert settings == GunicornSettings(workers=3, threads=2, faiss_threads=2, access_log=True)


def test_the_api_key_comes_from_the_flag_or_the_environment(monkeypatch):
    monkeypatch.setenv(API_KEY_ENV, "from-env")
    assert cli.settings_from_args(parse())[0].api_key == "from-env"
    assert cli.settings_from_args(parse("--api-key", "flag"))[0].api_key == "flag"
    monkeypatch.delenv(API_KEY_ENV)
    assert cli.settings_from_args(parse())[0].writes_enabled is False
    with pytest.raises(SystemExit):  # a usage error while parsing
        parse("--max-wait-ms", "-1")
    with pytest.raises(UserError, match="--api-key is empty"):  # not writes quietly off
        cli.settings_from_args(parse("--api-key", " "))
    monkeypatch.setenv(API_KEY_ENV, "   ")  # was writes quietly off too
    with pytest.raises(UserError, match="holds only whitespace"):
        cli.settings_from_args(parse())
    monkeypatch.setenv(API_KEY_ENV, "")  # how compose files unset a variable
    assert cli.settings_from_args(parse())[0].writes_enabled is False


def test_batching_settings_are_bounded(capsys):
    """`--max-wait-ms 1e9` and `--max-batch 100000` started a server: a batch held for days,
    a forward pass of 100,000 images."""
    from server.config import MAX_BATCH, MAX_BATCH_ENTRIES, MAX_WAIT_MS

    assert parse("--max-batch", str(MAX_BATCH)).max_batch == MAX_BATCH
    assert parse("--max-wait-ms", "0").max_wait_ms == 0
    assert (
        parse("--max-batch-entries", str(MAX_BATCH_ENTRIES)).max_batch_entries == MAX_BATCH_ENTRIES
    )
    for flag, value in (
        ("--max-batch", str(MAX_BATCH + 1)),
        ("--max-batch", "0"),
        ("--max-wait-ms", "1e9"),
        ("--max-wait-ms", str(MAX_WAIT_MS + 1)),
        ("--max-batch-entries", "100000"),
    ):
        with pytest.raises(SystemExit):
            parse(flag, value)
        assert "must be" in capsys.readouterr().err


def test_the_listen_address_is_checked_while_parsing():
    assert parse("--host", "::1").host == "::1"
    for bad in ("not a host", "", "a..b"):
        with pytest.raises(SystemExit):
            parse("--host", bad)


def test_the_api_key_file_and_the_hardening_flags(monkeypatch, tmp_path):
    monkeypatch.setenv(API_KEY_ENV, "from-env")
    key = tmp_path / "key"
    key.write_text("from-file\n")
    config, settings = cli.settings_from_args(
        parse(
            "--api-key-file", str(key), "--rate-limit", "5", "--rate-burst", "7",
            "--cors-origin", "https://a.example", "--header-timeout", "4", "--body-timeout", "9",
        )
    )  # fmt: skip
    assert config.api_key == "from-file"
    assert (config.rate_limit, config.rate_burst) == (5.0, 7)
    assert config.cors_origins == ("https://a.example",)
    assert (settings.header_timeout_s, settings.body_timeout_s) == (4.0, 9.0)
    with pytest.raises(SystemExit):  # one source of the key on the command line
        parse("--api-key", "a", "--api-key-file", str(key))
    key.write_text("\n")
    with pytest.raises(UserError, match="empty"):
        cli.settings_from_args(parse("--api-key-file", str(key)))
    with pytest.raises(UserError, match="cannot read"):
        cli.settings_from_args(parse("--api-key-file", str(tmp_path / "missing")))


def test_the_model_and_graceful_timeouts_are_settable_and_bounded():
    """Both were fixed (30 s): a slow model on a busy machine could not be given longer, nor a
    long batch search time to finish during a reload."""
    config, settings = cli.settings_from_args(
        parse("--model-timeout", "90", "--graceful-timeout", "120")
    )
    assert (config.request_timeout_s, settings.graceful_timeout_s) == (90.0, 120.0)
    config, settings = cli.settings_from_args(parse())
    assert (config.request_timeout_s, settings.graceful_timeout_s) == (30.0, 30.0)
    from server.serve import PhonesimGunicorn

    gunicorn = PhonesimGunicorn(config, replace(settings, graceful_timeout_s=120), Path("."))
    assert gunicorn.cfg.graceful_timeout == 120.0
    for flag, bad in (("--model-timeout", "0"), ("--model-timeout", "nan"),
                      ("--graceful-timeout", "-1"), ("--graceful-timeout", "2.5")):  # fmt: skip
        with pytest.raises(SystemExit):
            parse(flag, bad)


def test_runtime_device_and_model_threads_reach_the_settings():
    config, settings = cli.settings_from_args(
        parse("--runtime", "onnx-int8", "--device", "cpu", "--model-threads", "3")
    )
    assert (config.runtime, config.device, settings.torch_threads) == ("onnx-int8", "cpu", 3)
    assert cli.settings_from_args(parse("--torch-threads", "2"))[1].torch_threads == 2  # old name
    with pytest.raises(SystemExit):
        parse("--runtime", "tensorrt")


def test_sync_interval_and_store_reach_the_settings():
    config, _ = cli.settings_from_args(parse())
    assert (config.sync_interval_s, config.store) == (0.5, None)
    shared = ["--sync-interval", "0.2", "--store", "postgresql://u@db.example:5433/shop"]
    config, _ = cli.settings_from_args(
        build_parser().parse_args(["serve", "--checkpoint", "c", *shared])
    )
    assert (config.sync_interval_s, config.store) == (0.2, "postgresql://u@db.example:5433/shop")
    with pytest.raises(UserError, match="not both"):  # the folder would be ignored
        cli.settings_from_args(parse(*shared))
    for bad in ("0", "-1", "nan", "61", "soon"):
        with pytest.raises(SystemExit):
            parse("--sync-interval", bad)
    for bad in ("mysql://db/shop", "/var/lib/catalog.sqlite"):
        with pytest.raises(SystemExit):
            parse("--store", bad)
    no_index = build_parser().parse_args(["serve", "--checkpoint", "c"])
    with pytest.raises(UserError, match="--index"):
        cli.settings_from_args(no_index)
    pg = build_parser().parse_args(["serve", "--checkpoint", "c", "--store", "postgres://h/db"])
    assert cli.settings_from_args(pg)[0].index is None  # the store alone names the catalog


def test_keys_from_the_flag_and_the_environment_lose_outer_whitespace(monkeypatch):
    """$PHONESIM_API_KEY from a secret file ends with a newline; a header cannot carry it, so
    every write was refused (the file's key was already stripped)."""
    monkeypatch.setenv(API_KEY_ENV, "sekrit\n")
    assert cli.settings_from_args(parse())[0].api_key == "sekrit"
    assert cli.settings_from_args(parse("--api-key", " flag "))[0].api_key == "flag"


def test_a_key_an_http_header_cannot_carry_is_refused():
    """Headers arrive as latin-1: a key in UTF-8 beyond ASCII never matched."""
    with pytest.raises(ValueError, match="printable ASCII"):
        ServerConfig(checkpoint="c", index="i", api_key="clé-secret").validate()


@pytest.mark.parametrize("mb", [0.0, 0.001, 2048.0])
def test_an_upload_limit_out_of_range_is_refused_in_the_config_too(mb):
    """An app factory given settings directly (not through the flags) checks them the same."""
    with pytest.raises(ValueError, match="max_upload_mb must be 0.01-1024"):
        ServerConfig(checkpoint="c", index="i", max_upload_mb=mb).validate()


def test_the_key_leaves_the_arguments_even_when_a_path_holds_it(monkeypatch):
    """With --api-key demo and a path holding "demo", the restart that hides the key was
    skipped (a substring test), while the log said it happened."""
    monkeypatch.setattr(
        "sys.orig_argv",
        ["python", "-m", "phonesim", "serve", "--index", "demo/index", "--api-key", "demo"],
    )
    calls = []

    def fake_exec(path, argv, env):  # noqa: ANN001, ANN202
        calls.append((argv, env))
        raise SystemExit(0)

    monkeypatch.setattr(cli.os, "execve", fake_exec)
    with pytest.raises(SystemExit):
        cli.hide_key_from_process_list("demo")
    argv, env = calls[0]
    assert "--api-key" not in argv and argv[-2:] == ["--index", "demo/index"]
    assert env[API_KEY_ENV] == "demo"


@pytest.mark.parametrize(
    "argv",
    [
        ("--cors-origin", "shop.example"),  # no scheme: never equals a browser's Origin
        ("--cors-origin", "https://shop.example/path"),
        ("--cors-origin", "https://shop.example:abc"),  # no port a browser could send
        ("--threads", "100000"),
        ("--max-upload-mb", "0.001"),  # 1 KiB: refuses every photo
        ("--max-upload-mb", "1e6"),  # a terabyte held per request
        ("--max-upload-mb", "nan"),
    ],
)
def test_flag_values_that_could_never_work_are_refused(argv, capsys):
    with pytest.raises(SystemExit):
        parse(*argv)
    assert "must be" in capsys.readouterr().err


def test_a_burst_without_a_rate_is_refused():
    with pytest.raises(UserError, match="--rate-burst needs --rate-limit"):
        cli.settings_from_args(parse("--rate-burst", "5"))
    assert parse("--cors-origin", "http://localhost:3000/").cors_origin == ["http://localhost:3000"]


def test_an_image_root_that_is_no_folder_is_refused(tmp_path):
    """A mistyped folder would only show later, as thumbnails that are never found."""
    with pytest.raises(UserError, match="--image-root .*missing: does not exist"):
        cli.settings_from_args(parse("--image-root", str(tmp_path / "missing")))
    (tmp_path / "f.jpg").write_bytes(b"x")
    with pytest.raises(UserError, match="is a file, not a folder"):
        cli.settings_from_args(parse("--image-root", str(tmp_path / "f.jpg")))
    with pytest.raises(UserError, match="--image-root is empty"):
        cli.settings_from_args(parse("--image-root", ""))  # it read as "." before
    config, _ = cli.settings_from_args(parse("--image-root", str(tmp_path)))
    assert config.image_roots == (str(tmp_path),)


def test_an_address_another_server_listens_on_is_one_line_before_gunicorn():
    import socket

    from server.preflight import check_address

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(UserError, match="another process listens there"):
            check_address("127.0.0.1", port)
    with pytest.raises(UserError, match="cannot listen on 10.255.255.1"):
        check_address("10.255.255.1", 8000)  # an address of no interface here


def test_a_socket_handed_down_is_not_checked_as_busy(monkeypatch):
    """gunicorn's USR2 re-exec and systemd's socket activation start a server on a port that
    is held on purpose: the preflight must not refuse it as taken."""
    from server import preflight
    from server.config import GunicornSettings, ServerConfig

    checked = []
    monkeypatch.setattr(preflight, "check_in_child", lambda config: None)
    monkeypatch.setattr(preflight, "check_address", lambda host, port: checked.append(port))
    monkeypatch.delenv("GUNICORN_FD", raising=False)
    monkeypatch.delenv("LISTEN_FDS", raising=False)
    config = ServerConfig(checkpoint="ck", index="ix")
    settings = GunicornSettings(host="127.0.0.1", port=8000)
    preflight.preflight(config, settings)
    assert checked == [8000]
    for variable in ("GUNICORN_FD", "LISTEN_FDS"):
        monkeypatch.setenv(variable, "3")
        preflight.preflight(config, settings)
        monkeypatch.delenv(variable)
    assert checked == [8000]  # not checked when the socket is handed down


def test_an_image_dir_that_cannot_be_written_is_refused_at_start(tmp_path, capsys, monkeypatch):
    """It was taken: the server started with writes enabled, and every add answered 500 with
    a FileExistsError traceback in the log. Only where writes are on: a read-only replica
    reads thumbnails there (a share mounted read-only), and '' still means none.
    --faiss-threads had no upper bound either."""
    monkeypatch.delenv(API_KEY_ENV, raising=False)
    (tmp_path / "key.txt").write_text("k\n")
    key = ("--api-key-file", str(tmp_path / "key.txt"))
    for bad in (tmp_path / "key.txt", tmp_path / "key.txt" / "up"):  # below a file: never
        with pytest.raises(UserError, match="--image-dir .*is a file.*cannot be kept there"):
            cli.settings_from_args(parse(*key, "--image-dir", str(bad)))
        read_only = cli.settings_from_args(parse("--image-dir", str(bad)))[0]
        assert not read_only.writes_enabled and read_only.image_dir == str(bad)
    assert not cli.settings_from_args(parse(*key, "--image-dir", ""))[0].image_dir
    with pytest.raises(SystemExit):
        parse("--faiss-threads", "100000")
    assert "must be 1 to" in capsys.readouterr().err


def test_a_key_file_others_can_read_and_a_short_key_are_warned_about(tmp_path, caplog):
    """Nothing said either: a key other users can read, or one guessable, opens every write."""
    key = tmp_path / "key"
    key.write_text("a-long-random-key-of-32-characters\n")
    key.chmod(0o644)
    assert cli.settings_from_args(parse("--api-key-file", str(key)))[0].api_key
    assert "can be read by other users of this machine (mode 644); chmod 600" in caplog.text
    caplog.clear()
    key.chmod(0o600)
    cli.settings_from_args(parse("--api-key-file", str(key)))
    assert caplog.text == ""
    cli.settings_from_args(parse("--api-key", "short"))
    assert "the API key has 5 characters; use at least 16" in caplog.text


def test_python_m_server_takes_quiet_as_phonesim_does(monkeypatch):
    """`python -m server` had -v but no -q: `phonesim -q serve` had no equivalent there."""
    seen = {}

    def fake_run(prog, run, args, **kw):  # noqa: ANN001, ANN202, ANN003
        seen.update(kw)
        return 0

    monkeypatch.setattr(cli, "run_reporting_errors", fake_run)
    assert cli.main(["--checkpoint", "c", "--index", "i", "-q"]) == 0
    assert seen["quiet"] is True and seen["verbose"] is False
    with pytest.raises(SystemExit):
        cli.main(["--checkpoint", "c", "--index", "i", "-q", "-v"])
