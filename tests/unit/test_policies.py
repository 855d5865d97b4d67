"""Policy files: exact decimals, every problem with its line, managed fields refused, duplicate ids, and the diff
against the published set (versions bumped only on change)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from stream_jobs.policies import (
    PolicyFileError,
    PolicyRescopeError,
    check_rescopes,
    compute_diff,
    load_policy_file,
    load_policy_text,
    render_diff,
)

pytestmark = pytest.mark.unit

NOW = datetime(2025, 6, 1, tzinfo=UTC)
GOOD = """policies:
  - policy_id: a
    scope_type: team
    scope_value: search
    period: week
    timezone: Europe/Berlin
    limit_usd: 0.1
    mode: soft
    thresholds:
      - {percent: 80, actions: [notify]}
"""


def test_the_example_file_loads() -> None:
    policies = load_policy_file(Path(__file__).resolve().parents[2] / "infra" / "policies.example.yaml", now=NOW)
    assert {p.policy_id for p in policies} == {"support-monthly", "agent-007-daily", "enterprise-weekly"}


def test_amounts_are_exact_decimals() -> None:
    (policy,) = load_policy_text(GOOD, source="p.yaml", now=NOW)
    assert policy.limit_usd == Decimal("0.1") and policy.version == 1 and policy.updated_at == NOW


def test_every_problem_is_reported_with_its_line() -> None:
    bad = (GOOD.replace("period: week", "period: fortnight").replace("percent: 80", "percent: 80, extra: 1")
           + "  - policy_id: a\n    version: 3\n")
    with pytest.raises(PolicyFileError) as refused:
        load_policy_text(bad, source="p.yaml", now=NOW)
    text = str(refused.value)
    assert "p.yaml:5: policies[0].period: Input should be 'day', 'week' or 'month'" in text
    assert "p.yaml:10: policies[0].thresholds[0].extra: Extra inputs are not permitted" in text
    assert "p.yaml:12: policies[1].version: version is set by `finops policy apply`" in text
    assert "p.yaml:11: policies[1].scope_type: Field required" in text  # a missing key points at its policy
    assert len(refused.value.problems) == 9
    assert "nothing was published" in text


def test_duplicate_ids_and_broken_yaml_are_refused() -> None:
    with pytest.raises(PolicyFileError, match=r"p.yaml:11: policies\[1\].policy_id: policy_id 'a' is already used"):
        load_policy_text(GOOD + GOOD.removeprefix("policies:\n"), source="p.yaml", now=NOW)
    with pytest.raises(PolicyFileError, match=r"p.yaml:3: not valid YAML"):
        load_policy_text("policies:\n  - a: [1,\n  - b: 2\n", source="p.yaml", now=NOW)


def test_diff_bumps_versions_only_on_change() -> None:
    (old,) = load_policy_text(GOOD, source="p.yaml", now=NOW)
    published = {"a": old.model_copy(update={"version": 4}), "gone": old.model_copy(update={"policy_id": "gone"})}
    (same,) = load_policy_text(GOOD, source="p.yaml", now=datetime(2025, 7, 1, tzinfo=UTC))
    changes = compute_diff([same], published)
    assert [(c.action, c.policy_id) for c in changes] == [("keep", "a"), ("orphan", "gone")]
    (raised,) = load_policy_text(GOOD.replace("0.1", "5"), source="p.yaml", now=NOW)
    changes = compute_diff([raised], published, prune=True)
    assert [(c.action, c.policy_id) for c in changes] == [("update", "a"), ("delete", "gone")]
    assert changes[0].policy is not None and changes[0].policy.version == 5
    assert "limit_usd: 0.1 -> 5" in render_diff(changes)


def test_a_rescope_is_marked_in_the_diff_and_refused_without_allow_rescope() -> None:
    # issue 14 item 3: a file reusing another team's policy_id with its own scope took the budget over silently
    (old,) = load_policy_text(GOOD, source="p.yaml", now=NOW)
    published = {"a": old.model_copy(update={"version": 2})}
    (taken,) = load_policy_text(GOOD.replace("scope_value: search", "scope_value: payments"), source="p.yaml",
                                now=NOW)
    changes = compute_diff([taken], published)
    assert changes[0].rescope == ("team=search", "team=payments")
    assert "RE-SCOPE team=search -> team=payments (needs --allow-rescope)" in render_diff(changes)
    with pytest.raises(PolicyRescopeError, match=r"a: team=search -> team=payments.*--allow-rescope"):
        check_rescopes(changes, allow=False)
    check_rescopes(changes, allow=True)
    (as_project,) = load_policy_text(GOOD.replace("scope_type: team", "scope_type: project"), source="p.yaml",
                                     now=NOW)
    assert compute_diff([as_project], published)[0].rescope == ("team=search", "project=search")
    # other updates, additions and deletions are no re-scope
    (raised,) = load_policy_text(GOOD.replace("0.1", "5"), source="p.yaml", now=NOW)
    changes = compute_diff([raised], {"a": old, "gone": old.model_copy(update={"policy_id": "gone"})}, prune=True)
    assert [c.rescope for c in changes] == [None, None]
    check_rescopes(changes, allow=False)
    assert compute_diff([taken], {})[0].rescope is None


def test_an_unreachable_broker_is_named_with_how_to_start_one() -> None:
    """`finops policy list` with nothing running: the error names the broker and the command that starts it."""
    from stream_jobs.policies import PolicyPublishError, read_compacted_topic

    with pytest.raises(PolicyPublishError) as caught:
        read_compacted_topic({"bootstrap.servers": "127.0.0.1:1", "log_level": 0}, "finops.policies.v1", timeout=0.5)
    message = str(caught.value)
    assert "finops.policies.v1 from the broker at 127.0.0.1:1" in message
    assert "`finops stack up`" in message and "FINOPS_KAFKA_BOOTSTRAP" in message
