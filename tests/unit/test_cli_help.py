"""Every command and option of ``finops`` has help text (a project rule), and every help page renders.

The walk covers the whole parser tree that :func:`finops.cli.build_parser` builds from COMMAND_MODULES, so a new
command or flag without ``help=`` fails here with its command path and flag. Rendering each page catches what
argparse only finds when someone asks for ``--help``: a stray ``%`` or an unknown ``%(name)s`` in a help string.
"""

from __future__ import annotations

import argparse

import pytest

from finops.cli import build_parser

pytestmark = pytest.mark.unit


def walk_parsers(parser: argparse.ArgumentParser, path: tuple[str, ...]) -> list[tuple[tuple[str, ...],
                                                                                         argparse.ArgumentParser]]:
    """``parser`` and every sub-command parser below it, each with its command path (``("finops", "agent",
    "list")``), depth first in registration order."""
    found = [(path, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.extend(walk_parsers(sub, (*path, name)))
    return found


def missing_help(parser: argparse.ArgumentParser, path: tuple[str, ...]) -> list[str]:
    """The commands and options of ``parser`` (not below it) without help, each as ``finops agent list --team``
    or ``finops agent list (command)``. A command counts as documented by its ``help=`` in the parent's listing or
    its own ``description=``; ``-h`` is argparse's own."""
    missing: list[str] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            for name, sub in action.choices.items():
                if not helps.get(name) and not sub.description:
                    missing.append(f"{' '.join((*path, name))} (command): give add_parser({name!r}, help=...)")
        elif isinstance(action, argparse._HelpAction):
            continue
        elif not action.help:
            flag = action.option_strings[0] if action.option_strings else action.dest
            missing.append(f"{' '.join(path)} {flag}: give add_argument({flag!r}, help=...)")
    return missing


PARSERS = walk_parsers(build_parser(), ("finops",))


def test_the_walk_reaches_the_sub_commands() -> None:
    paths = {path for path, _ in PARSERS}
    assert {("finops", "emit"), ("finops", "agent", "list"), ("finops", "token", "issue")} <= paths


def test_every_command_and_option_has_help() -> None:
    missing = [line for path, parser in PARSERS for line in missing_help(parser, path)]
    if missing:
        pytest.fail(f"{len(missing)} commands/options of `finops` have no help text (say what the value is, its "
                    "unit or allowed values, and its default):\n  " + "\n  ".join(missing), pytrace=False)


def render_problem(path: tuple[str, ...], parser: argparse.ArgumentParser) -> str | None:
    """Why ``parser.format_help()`` fails (argparse %-formats each help string), or None when it renders."""
    try:
        parser.format_help()
    except (ValueError, TypeError, KeyError) as err:
        return f"`{' '.join(path)} --help` does not render: {err!r} (a literal % in a help string is written %%)"
    return None


@pytest.mark.parametrize("path,parser", PARSERS, ids=[" ".join(path) for path, _ in PARSERS])
def test_help_page_renders(path: tuple[str, ...], parser: argparse.ArgumentParser) -> None:
    problem = render_problem(path, parser)
    if problem:
        pytest.fail(problem, pytrace=False)


def test_a_stray_percent_is_caught() -> None:
    parser = argparse.ArgumentParser(prog="finops")
    parser.add_argument("--discount", help="what a 10% discount saves")
    assert "--help` does not render" in (render_problem(("finops",), parser) or "")


def test_choices_are_the_codes_own() -> None:
    """Options whose choices mirror a constant of the code accept exactly its values (the help lists them)."""
    from dashboard.auth import ROLES
    from governance.bills import PROVIDERS
    from governance.recommend import KINDS

    def choices(path: tuple[str, ...], flag: str) -> tuple[str, ...]:
        parser = dict(PARSERS)[path]
        return tuple(next(a for a in parser._actions if flag in a.option_strings).choices or ())

    assert choices(("finops", "token", "issue"), "--role") == ROLES
    assert choices(("finops", "recommend"), "--kind") == KINDS
    assert choices(("finops", "bills", "import"), "--provider") == PROVIDERS
