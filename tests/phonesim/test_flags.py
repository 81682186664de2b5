"""Every phonesim command speaks the same flag language: help on every flag, range-checked
numbers, --data for inputs, --index for the index, -v/-q on either side of the subcommand."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from phonesim.cli import _subparsers, build_parser


def _commands() -> list[argparse.ArgumentParser]:
    return _subparsers(build_parser())


def _options(parser: argparse.ArgumentParser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction | argparse._HelpAction):
            continue
        yield action


def test_every_flag_has_help_text():
    missing = [
        f"{parser.prog} {'/'.join(a.option_strings) or a.dest}"
        for parser in _commands()
        for a in _options(parser)
        if a.help is None
    ]
    assert missing == []


def test_every_number_is_range_checked():
    """A bare int/float type accepts -5 and nan; the range-checking types say what is valid."""
    bare = [
        f"{parser.prog} {'/'.join(a.option_strings)}"
        for parser in _commands()
        for a in _options(parser)
        if a.type in (int, float) and a.dest != "seed"
    ]
    assert bare == []


def test_inputs_are_data_and_indexes_are_index():
    for parser in _commands():
        flags = {s for a in _options(parser) for s in a.option_strings}
        for old, new in (
            ("--images", "--data"),
            ("--manifest", "--data"),
            ("--against", "--index"),
        ):
            if old in flags:
                assert new in flags, f"{parser.prog}: {old} without {new}"


@pytest.mark.parametrize(
    "argv", [["-q", "index", "info", "--index"], ["index", "info", "-q", "--index"]]
)
def test_quiet_works_before_and_after_the_subcommand(argv, tmp_path):
    args = build_parser().parse_args([*argv, str(tmp_path)])
    assert args.quiet is True and args.verbose is False


@pytest.mark.parametrize(
    "argv", [["-v", "-q", "index", "info", "--index"], ["-v", "index", "info", "-q", "--index"]]
)
def test_verbose_and_quiet_together_are_a_usage_error(argv, tmp_path, capsys):
    """-v had won over -q without a word."""
    from phonesim.cli import main

    with pytest.raises(SystemExit) as stop:
        main([*argv, str(tmp_path)])
    assert stop.value.code == 2
    assert "-v/--verbose and -q/--quiet contradict each other" in capsys.readouterr().err


def test_help_does_not_import_the_model_stack():
    code = (
        "import sys; from phonesim.cli import build_parser; build_parser(); "
        "print(sorted(m for m in ('torch', 'timm', 'onnxruntime', 'faiss', 'flask') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


MODEL_COMMANDS = (
    "embed",
    "evaluate",
    "serve",
    "export",
    "duplicates find",
    "duplicates calibrate",
    "index query",
)


def test_every_command_that_runs_the_model_takes_runtime_and_device():
    by_name = {parser.prog.removeprefix("phonesim "): parser for parser in _commands()}
    for name in (*MODEL_COMMANDS, "train"):
        flags = {s for a in _options(by_name[name]) for s in a.option_strings}
        assert "--device" in flags, name
        assert ("--runtime" in flags) == (name != "train"), name
    args = build_parser().parse_args(["embed", "--checkpoint", "c", "--data", "d", "--out", "o"])
    assert (args.runtime, args.device) == ("auto", None)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--data", "d", "--out", "o", "--device", "gpu"])


@pytest.mark.parametrize("columns", [60, 80, 100, 120])
def test_help_never_splits_a_flag_or_word_at_its_hyphen(monkeypatch, columns):
    """textwrap's default broke after hyphens: '--no-' ended a line, 'progress' began the next."""
    monkeypatch.setenv("COLUMNS", str(columns))
    split = [
        f"{parser.prog}: {line.strip()}"
        for parser in [build_parser(), *_commands()]
        for line in parser.format_help().splitlines()
        if line.rstrip().endswith("-") and line.rstrip()[-2:-1].isalnum()
    ]
    assert split == []
