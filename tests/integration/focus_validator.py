"""The FinOps Foundation's FOCUS validator (PyPI ``focus-validator``), run as a CLI from a virtualenv of its own.

Why its own virtualenv: the only release that installs on the project's Python 3.11 (1.0.0) knows FOCUS 1.0, and
the releases that check FOCUS 1.2 (2.x) need Python >= 3.12 and pin numpy < 2 and pandas < 3, which would downgrade
what chdb brings into the project's venv. So ``.venv-focus`` (gitignored) is built with a Python 3.12+ found on PATH
or under pyenv, from the pinned set in ``focus_validator_requirements.txt`` beside this file, by
``make focus-validator`` (a prerequisite of ``make test``) or by the test itself when it is missing.

``python -m tests.integration.focus_validator`` builds it; with ``FOCUS_VALIDATOR_REQUIRED=1`` (CI) a failed build
exits non-zero and the test fails instead of skipping.

Judging the result (:func:`judge`): the validator lists every rule that did not hold, and two kinds of entry in
that list are not failures of the dataset, both decided from the rule definitions the validator ships
(``focus_validator/rules/model-<version>.json``), never from a copied list of ids:
- rules the dataset's provider does not support. A rule's ``ApplicabilityCriteria`` are conjunctive in the spec text
  (CostAndUsage-D-047-C: "MUST be present when the provider supports prices in virtual currency *and* publishes unit
  prices exclusive of discounts"), but validator 2.2.1 applies a rule when *any* criterion is claimed; here a rule
  applies when all of its criteria are claimed and some composite that contains it applies. A composite that failed
  only through such rules is vacuous.
- the branch of an exclusive OR that the export is, by design, not in (:data:`EXCLUSIVE_BRANCHES`): validator 2.2.1
  lists the OR's losing branch as a failure even when the OR holds.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
VENV = ROOT / ".venv-focus"
REQUIREMENTS = Path(__file__).with_name("focus_validator_requirements.txt")
REQUIRED_ENV = "FOCUS_VALIDATOR_REQUIRED"

#: Losing branch of an exclusive OR -> (the branch the export is in, why). Each must hold for the entry to be
#: excused; an id that is not in the shipped model fails the test (no silent excuse by typo).
EXCLUSIVE_BRANCHES: dict[str, tuple[str, str]] = {
    "InvoiceId-C-004-C": ("InvoiceId-C-005-C", ("every charge is on the issuer's invoice for the billing period, "
                                                "so InvoiceId is never null (a provisional id, InvoiceId-C-006-O)")),
}


class FocusValidatorUnavailable(Exception):
    """The validator's virtualenv cannot be built here (no Python 3.12+, or pip failed); the message says why."""


def _runs(python: str) -> bool:
    try:
        done = subprocess.run([python, "-c", "import sys; assert sys.version_info >= (3, 12)"],
                              capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def _candidates() -> Iterator[str]:
    if os.environ.get("FOCUS_PYTHON"):
        yield os.environ["FOCUS_PYTHON"]
    # 3.12 first: the pinned numpy 1.26 has wheels for it, not for 3.13+.
    for name in ("python3.12", "python3.13", "python3.14"):
        found = shutil.which(name)
        if found:
            yield found
    pyenv_root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    for version in sorted((pyenv_root / "versions").glob("3.1[2-9]*")):
        yield str(version / "bin" / "python3")


def find_python() -> str | None:
    """A Python >= 3.12 that runs (a pyenv shim of an inactive version does not), or None."""
    return next((c for c in _candidates() if _runs(c)), None)


def _digest() -> str:
    return hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()


def ensure_venv(venv: Path = VENV) -> Path:
    """``venv`` with the pinned validator installed, built if missing or stale; returns its ``focus-validator``.

    Blocks on the build (pip downloads); safe to call from concurrent processes (a lock file). Raises
    :class:`FocusValidatorUnavailable` with the reason when it cannot be built."""
    exe = venv / "bin" / "focus-validator"
    marker = venv / ".installed"
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f"{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if exe.exists() and marker.exists() and marker.read_text() == _digest():
            return exe
        python = find_python()
        if python is None:
            raise FocusValidatorUnavailable(
                "no Python >= 3.12 found (PATH python3.12/3.13/3.14, pyenv versions, or FOCUS_PYTHON); "
                "focus-validator 2.x, which checks FOCUS 1.2, needs one")
        # Built in place (a venv's scripts name its path); the marker, written last, says the build finished.
        shutil.rmtree(venv, ignore_errors=True)
        steps = ([python, "-m", "venv", str(venv)],
                 [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-input", "-r", str(REQUIREMENTS)])
        for step in steps:
            done = subprocess.run(step, capture_output=True, text=True, timeout=1200, check=False)
            if done.returncode != 0:
                shutil.rmtree(venv, ignore_errors=True)
                raise FocusValidatorUnavailable(
                    f"building {venv.name} failed at `{' '.join(step[:4])} ...`: {done.stderr.strip()[-800:]}")
        marker.write_text(_digest())
        return exe


@dataclass(frozen=True)
class RuleResult:
    rule_id: str
    status: str  # passed | failed | errored | skipped
    message: str


@dataclass
class ValidatorRun:
    version: str
    results: dict[str, RuleResult]
    model: dict[str, Any]
    output: str = ""
    not_passed: list[RuleResult] = field(default_factory=list)

    def status(self, rule_id: str) -> str:
        result = self.results.get(rule_id)
        return result.status if result else "absent"


def _package_dir(exe: Path) -> Path:
    python = exe.with_name("python")
    code = "import focus_validator, os; print(os.path.dirname(os.path.dirname(focus_validator.__file__)))"
    done = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True, timeout=60)
    return Path(done.stdout.strip())


def run_validator(exe: Path, data_file: Path, *, version: str, criteria: list[str], workdir: Path) -> ValidatorRun:
    """Run the CLI on ``data_file`` against FOCUS ``version`` with the provider's applicability ``criteria``, no
    download (the rule model shipped in the package). Blocks until it ends; raises AssertionError if it crashed."""
    site = _package_dir(exe)
    report = workdir / "focus-validator.xml"
    command = [str(exe), "--data-file", str(data_file.resolve()), "--validate-version", version, "--block-download",
               "--applicability-criteria", ",".join(criteria), "--output-type", "unittest",
               "--output-destination", str(report)]
    # 2.2.1 opens focus_validator/rules/currency_codes.csv relative to the working directory.
    done = subprocess.run(command, cwd=site, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0 and report.exists(), (
        f"focus-validator crashed (exit {done.returncode}): {done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    models = sorted((site / "focus_validator" / "rules").glob(f"model-{version}*.json"))
    assert models, f"focus-validator ships no rule model for FOCUS {version}"
    model = json.loads(models[-1].read_text())
    results: dict[str, RuleResult] = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        rule_id = case.get("name", "").split(" :: ")[0]
        child = next(iter(case), None)
        status = {"failure": "failed", "error": "errored", "skipped": "skipped"}.get(
            child.tag if child is not None else "", "passed")
        message = child.get("message", "") if child is not None else ""
        results[rule_id] = RuleResult(rule_id, status, message)
    run = ValidatorRun(version, results, model, done.stdout + done.stderr)
    run.not_passed = [r for r in results.values() if r.status in ("failed", "errored")]
    return run


def _children(requirement: Any) -> Iterator[str]:
    if isinstance(requirement, Mapping):
        if requirement.get("CheckFunction") == "CheckModelRule" and requirement.get("ModelRuleId"):
            yield str(requirement["ModelRuleId"])
        for value in requirement.values():
            yield from _children(value)
    elif isinstance(requirement, list):
        for item in requirement:
            yield from _children(item)


def judge(run: ValidatorRun, claimed: set[str]) -> tuple[list[RuleResult], dict[str, str]]:
    """(failures of the dataset, excused entries -> why), per the module docstring."""
    rules: dict[str, Any] = run.model["ModelRules"]
    for losing, (winning, _why) in EXCLUSIVE_BRANCHES.items():
        assert losing in rules and winning in rules, f"{losing}/{winning} not in the FOCUS {run.version} model"
    children = {rid: list(_children(rule.get("ValidationCriteria", {}).get("Requirement", {})))
                for rid, rule in rules.items()}
    parents: dict[str, list[str]] = {}
    for rid, kids in children.items():
        for kid in kids:
            parents.setdefault(kid, []).append(rid)
    memo: dict[str, bool] = {}

    def applies(rid: str, seen: frozenset[str] = frozenset()) -> bool:
        if rid not in memo:
            own = set(rules.get(rid, {}).get("ApplicabilityCriteria") or [])
            ups = [p for p in parents.get(rid, []) if p not in seen]
            memo[rid] = own <= claimed and (not ups or any(applies(p, seen | {rid}) for p in ups))
        return memo[rid]

    excused: dict[str, str] = {}
    for result in run.not_passed:
        rid = result.rule_id
        if not applies(rid):
            excused[rid] = "not applicable to the claimed criteria (all of a rule's criteria must be claimed)"
        elif rid in EXCLUSIVE_BRANCHES and run.status(EXCLUSIVE_BRANCHES[rid][0]) == "passed":
            excused[rid] = f"exclusive branch; {EXCLUSIVE_BRANCHES[rid][0]} holds: {EXCLUSIVE_BRANCHES[rid][1]}"
    changed = True
    while changed:  # composites that failed only through excused children
        changed = False
        for result in run.not_passed:
            rid = result.rule_id
            failed_kids = [k for k in children.get(rid, []) if run.status(k) in ("failed", "errored")]
            if rid not in excused and failed_kids and all(k in excused for k in failed_kids):
                excused[rid] = f"composite failed only through excused rules {failed_kids}"
                changed = True
    return [r for r in run.not_passed if r.rule_id not in excused], excused


def main() -> int:
    try:
        exe = ensure_venv()
    except FocusValidatorUnavailable as err:
        print(f"focus-validator: not built: {err}", file=sys.stderr)
        return 1 if os.environ.get(REQUIRED_ENV) == "1" else 0
    print(f"focus-validator: {exe}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
