"""The command line's shape: help on every subcommand and option, the shared options before or
after any subcommand, `--version`, and one real subprocess run of the installed entry point."""

from __future__ import annotations

import argparse
from importlib.metadata import version

import pytest

from clipstore.cli import build_parser, subparsers_of
from conftest import run_cli, run_main


def _commands(parser: argparse.ArgumentParser, prefix: str = ""):
    """(command path, its parser, the help its parent lists for it) for every subcommand."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            listed = {a.dest: a.help for a in action._choices_actions}
            for name, child in action.choices.items():
                path = f"{prefix} {name}".strip()
                yield path, child, listed.get(name)
                yield from _commands(child, path)


PARSER = build_parser()
COMMANDS = list(_commands(PARSER))


def test_the_tree_holds_every_stage_command():
    paths = {p for p, _, _ in COMMANDS}
    assert {"ingest", "doctor", "synth", "split", "sql", "ls", "show", "mine", "mine keywords", "mine terms",
            "embed", "knn", "project", "project ingest", "project mine", "project embed"} <= paths


@pytest.mark.parametrize("path", [p for p, _, _ in COMMANDS])
def test_every_command_and_option_has_help_with_its_default(path):
    _, parser, listed = next(c for c in COMMANDS if c[0] == path)
    assert listed, f"`clipstore {path}` has no help line in its parent's list"
    formatter = parser._get_formatter()  # the parser's own formatter class, as --help uses it
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        name = "/".join(action.option_strings) or action.dest
        assert action.help and action.help.strip(), f"`clipstore {path}` {name} has no help"
        shown = formatter._get_help_string(action) % {**vars(action), "prog": "clipstore"}
        if action.option_strings and action.default not in (None, False, argparse.SUPPRESS, [], ()):
            assert "default" in shown.lower(), f"`clipstore {path}` {name}: help does not state its default"


def test_every_subcommand_takes_the_shared_options():
    for parser in subparsers_of(PARSER):
        options = parser._option_string_actions
        assert {"--store", "--wait", "-q", "--quiet"} <= set(options), parser.prog


@pytest.mark.parametrize("argv, store, wait, quiet", [
    (["ls"], None, False, False),
    (["--store", "a", "--wait", "-q", "ls"], "a", True, True),
    (["ls", "--store", "b", "-q"], "b", False, True),
    (["--store", "a", "ls", "--store", "b"], "b", False, False),          # after the subcommand wins
    (["--store", "a", "mine", "keywords", "--wait", "--store", "c"], "c", True, False),
    (["-q", "project", "ingest", "--store", "d"], "d", False, True),
    (["project", "--data", "x", "ingest", "--wait"], None, True, False),
])
def test_shared_options_before_or_after(argv, store, wait, quiet):
    args = PARSER.parse_args(argv)
    assert (args.store, args.wait, args.quiet) == (store, wait, quiet)


def test_option_after_the_subcommand_picks_the_store(tmp_path):
    from clipstore.warehouse.store import Store
    Store(tmp_path / "real")
    assert "(the store is empty)" in run_main("--store", tmp_path / "nowhere", "ls", "--store", tmp_path / "real",
                                              "-q").stdout
    bad = run_main("--store", tmp_path / "real", "ls", "--store", tmp_path / "nowhere", check=False)
    assert bad.returncode == 3 and "no store at" in bad.stderr and "nowhere" in bad.stderr


def test_version_comes_from_the_package_metadata():
    shown = run_main("--version")
    assert shown.returncode == 0 and shown.stdout.strip() == f"clipstore {version('clipstore')}"


def test_help_lists_the_project_runner():
    out = run_main("--help").stdout
    assert "project" in out and "--version" in out and "shared options" in out


@pytest.mark.slow
def test_the_entry_point_runs_in_a_subprocess(tmp_path):
    """The one subprocess test: `python -m clipstore` parses, runs and reports errors without a traceback."""
    from clipstore.warehouse.store import Store
    Store(tmp_path / "store")
    assert run_cli("ls", "--store", tmp_path / "store", "-q").stdout.strip() == "(the store is empty)"
    bad = run_cli("show", "corpus:nope", "--store", tmp_path / "store", check=False)
    assert bad.returncode == 3 and "no corpus 'nope'" in bad.stderr and "Traceback" not in bad.stderr


def test_building_the_parser_loads_no_torch():
    """The lock refusal and --help must answer before torch (seconds to import) loads: no
    subcommand module may import it at parser-build time."""
    import subprocess
    import sys
    code = ("import sys, clipstore.cli as c; c.build_parser(); "
            "print(sorted(m for m in ('torch', 'ray', 'ot') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
