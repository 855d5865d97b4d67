"""``finops policy apply`` on a real broker: a file must not silently move a published policy to another scope
(issue 14 item 3); ``--allow-rescope`` makes it explicit."""

from __future__ import annotations

import argparse
from decimal import Decimal
from pathlib import Path

import pytest

from finops.topics import TopicNames
from stream_jobs import detection_cli
from stream_jobs.policies import PolicyRescopeError, load_published_policies

pytestmark = pytest.mark.integration

POLICY = """policies:
  - policy_id: search-monthly
    scope_type: team
    scope_value: {team}
    period: month
    limit_usd: {limit}
    mode: soft
    thresholds:
      - {{percent: 80, actions: [notify]}}
"""


def test_policy_apply_refuses_a_rescope_without_allow_rescope(kafka_bootstrap: str, topics: TopicNames,
                                                              tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("FINOPS_KAFKA_BOOTSTRAP", kafka_bootstrap)
    monkeypatch.setenv("FINOPS_KAFKA_TOPIC_PREFIX", topics.prefix)
    parser = argparse.ArgumentParser(prog="finops")
    detection_cli.register(parser.add_subparsers(dest="command"))
    config = {"bootstrap.servers": kafka_bootstrap}

    def apply(team: str, limit: str, *flags: str) -> int:
        path = tmp_path / f"{team}-{limit}.yaml"
        path.write_text(POLICY.format(team=team, limit=limit), encoding="utf-8")
        args = parser.parse_args(["policy", "apply", str(path), *flags])
        return int(args.func(args))

    def published() -> tuple[str, Decimal, int]:
        policy = load_published_policies(config, topics.policies)["search-monthly"]
        return policy.scope_value, policy.limit_usd, policy.version

    assert apply("search", "100") == 0
    assert published() == ("search", Decimal(100), 1)
    # another team's lead reuses the policy_id with their own team: refused, nothing published
    with pytest.raises(PolicyRescopeError, match="team=search -> team=payments"):
        apply("payments", "100000")
    assert "RE-SCOPE team=search -> team=payments" in capsys.readouterr().out
    assert published() == ("search", Decimal(100), 1)
    # the dry run shows it and publishes nothing
    assert apply("payments", "100000", "--dry-run") == 0
    assert "RE-SCOPE" in capsys.readouterr().out
    # a change that keeps the scope needs no flag
    assert apply("search", "150") == 0
    assert published() == ("search", Decimal(150), 2)
    # an admin's explicit re-scope
    assert apply("payments", "150", "--allow-rescope") == 0
    assert published() == ("payments", Decimal(150), 3)
