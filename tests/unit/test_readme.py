"""The README documents every setting and gives the two set-up commands CI relies on."""

from __future__ import annotations

from pathlib import Path

import pytest

import finops.settings as fs

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def test_every_setting_is_in_the_configuration_reference() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = []
    for cls in (fs.CoreSettings, *fs._SECTIONS.values()):
        prefix = cls.model_config.get("env_prefix", "")
        for field, info in cls.model_fields.items():
            env = fs._env_name(prefix, field, info)
            if f"`{env}`" not in readme:
                missing.append(env)
    assert missing == [], f"README configuration reference lacks: {missing}"


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "make run" in readme and "make test" in readme
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def _readme_finops_commands() -> list[str]:
    """Every ``finops ...`` command line of the README's code blocks: the lines of bash/sh blocks, and the ``$ ``
    prompts and ``finops`` lines of the others (continuations joined, comments and leading VAR=value dropped)."""
    import re
    import shlex

    text = (ROOT / "README.md").read_text()
    commands = []
    for lang, body in re.findall(r"^```(\w*)[^\n]*\n(.*?)^```", text, flags=re.S | re.M):
        if lang not in ("bash", "sh", "console", ""):
            continue
        for line in body.replace("\\\n", " ").splitlines():
            if line.startswith("$ "):
                line = line[2:]
            elif lang not in ("bash", "sh") and not re.match(r"finops [a-z-]+( |$)", line):
                continue  # output, or a block of configuration
            line = re.sub(r"<[^<>\n]+>", "PLACEHOLDER", line)  # <token id>
            for part in line.split("&&"):
                words = shlex.split(part, comments=True)
                for i, word in enumerate(words):
                    if word in (">", "<", "|", "2>&1"):  # the shell's redirection, not the command's
                        words = words[:i]
                        break
                while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):
                    words = words[1:]
                if words and words[0] == "finops":
                    commands.append(shlex.join(words))
    return commands


def test_every_finops_command_in_the_readme_parses() -> None:
    """A flag the CLI does not have (or lost) in a README example fails here, not on a user's shell."""
    import contextlib
    import io
    import shlex

    from finops.cli import build_parser

    commands = _readme_finops_commands()
    assert len(commands) > 30, commands
    wrong = []
    for command in commands:
        if "|" in command:  # `finops agent request|approve|list`: a list of subcommands, not a command line
            continue
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err):
                build_parser().parse_args(shlex.split(command)[1:])
        except SystemExit:
            wrong.append(f"{command}: {err.getvalue().strip().splitlines()[-1]}")
    assert wrong == [], "README commands the CLI refuses:\n" + "\n".join(wrong)
