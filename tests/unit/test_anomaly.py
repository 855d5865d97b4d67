"""Anomaly detection on hand-made window series: robust statistics, warm-up, no alarm on noisy but normal spend,
a spike found with expected / actual / impact / score and its root cause, winsorized learning, episodes, seasonality
and seeding."""

from __future__ import annotations

import random
from decimal import Decimal

import pytest

from schemas.models import Alert
from stream_jobs.anomaly import (
    AnomalyConfig,
    AnomalyDetector,
    build_anomaly_alert,
    compute_mad_scale,
    compute_median,
    compute_root_causes,
)

pytestmark = pytest.mark.unit

W = 300 * 1_000_000  # 5-minute windows
T0 = 1_748_854_800 * 1_000_000  # 2025-06-02 09:00 UTC


def feed(detector: AnomalyDetector, windows: list[float], agent: str = "a1", model: str = "small",
         start: int = 0) -> list:
    """One call per window with the given spend (0 = no call), then advance past each window."""
    found = []
    for i, value in enumerate(windows, start):
        ts = T0 + i * W + 1
        if value:
            detector.observe(ts, Decimal(str(value)), agent, "team-x", "proj", model, "chat")
        found += detector.advance(T0 + (i + 1) * W + detector.config.grace_s * 1_000_000)
    return found


def test_median_and_mad() -> None:
    assert compute_median([3.0, 1.0, 2.0]) == 2.0
    assert compute_median([1.0, 2.0, 3.0, 10.0]) == 2.5
    assert compute_mad_scale([1.0, 2.0, 3.0, 4.0, 100.0], 3.0) == pytest.approx(1.4826)


def test_noisy_normal_spend_raises_nothing_and_warm_up_holds_judgement() -> None:
    rng = random.Random(3)
    normal = [round(rng.lognormvariate(-2, 0.6), 6) if rng.random() > 0.2 else 0.0 for _ in range(600)]
    detector = AnomalyDetector(AnomalyConfig(warmup_windows=36))
    assert feed(detector, [5.0] + normal) == []  # a spike inside the warm-up is not judged either


def test_a_spike_is_reported_with_numbers_and_root_cause_then_resolved() -> None:
    rng = random.Random(5)
    normal = [round(rng.uniform(0.08, 0.12), 6) for _ in range(100)]
    detector = AnomalyDetector(AnomalyConfig(warmup_windows=36))
    assert feed(detector, normal) == []
    found = feed(detector, [3.0], model="big", start=100)
    assert sorted(a.entity_kind for a in found) == ["agent", "team"]
    anomaly = next(a for a in found if a.entity_kind == "agent")
    assert anomaly.state == "trigger" and anomaly.team == "team-x"
    assert anomaly.expected_usd == pytest.approx(Decimal("0.1"), abs=Decimal("0.02"))
    assert anomaly.actual_usd == Decimal("3.0")
    assert anomaly.impact_usd == anomaly.actual_usd - anomaly.expected_usd
    assert anomaly.impact_pct > 2000 and anomaly.score >= 4
    assert anomaly.root_causes[0].dimension == "model" and anomaly.root_causes[0].value == "big"
    alert = build_anomaly_alert(anomaly)
    Alert.from_avro_dict(alert)
    assert alert["details"]["root_cause_1"].startswith("model=big")
    # Two normal windows end the episode with one resolve (for the agent and for its team).
    resolves = feed(detector, normal[:2], start=101)
    assert {a.state for a in resolves} == {"resolve"} and len(resolves) == 2


def test_a_long_runaway_is_not_learned_as_normal() -> None:
    detector = AnomalyDetector(AnomalyConfig(warmup_windows=36, resolve_after=1000))
    feed(detector, [0.1] * 100)
    feed(detector, [2.0] * 60, start=100)  # five hours of runaway: winsorized into the history
    entity = detector.entities[("agent", "a1")]
    centre, _, c = entity.baseline.expected(0)
    assert 2.0 > 3 * (2.718281828 ** centre - c)


def test_root_causes_rank_by_unexplained_spend() -> None:
    causes = compute_root_causes(
        Decimal("10"), {("model", "a"): Decimal("2"), ("model", "b"): Decimal("8")},
        {("model", "a"): 0.9, ("model", "b"): 0.1}, Decimal("2"), top=2)
    assert [c.value for c in causes] == ["b", "a"]
    assert causes[0].contribution_usd == Decimal("7.8") and causes[0].share == pytest.approx(0.975)


def test_hour_of_week_profile_expects_a_recurring_peak() -> None:
    config = AnomalyConfig(warmup_windows=12, seasonal_min_samples=3, seasonal_samples=12, history_windows=1000)
    detector = AnomalyDetector(config)
    week = 7 * 24 * 12
    series = []
    for i in range(2 * week):
        hour = (i // 12) % 168
        series.append(3.0 if hour == 2 else 0.1)  # a busy hour every Monday 02:00
    # Start on a Monday 00:00 so slot 2 is the busy hour, after the warm-up.
    detector_start = 1_748_822_400 * 1_000_000  # 2025-06-02 00:00 UTC, a Monday
    global T0
    saved, T0 = T0, detector_start
    try:
        found = feed(detector, series)
    finally:
        T0 = saved
    first_week = [a for a in found if a.window_start_us < detector_start + week * W]
    later = [a for a in found if a.window_start_us >= detector_start + week * W and a.state == "trigger"]
    assert first_week and later == []


def test_seeded_history_skips_the_warm_up() -> None:
    detector = AnomalyDetector(AnomalyConfig(warmup_windows=36))
    detector.seed("agent", "a1", [(T0 + i * W, Decimal("0.1")) for i in range(50)], until_us=T0 + 50 * W,
                  team="team-x")
    found = feed(detector, [3.0], start=50)
    assert [a.entity for a in found] == ["a1"]  # the team was not seeded: still warming up


def _reference_windows(events: list[tuple[int, Decimal, str, str, str, str, str | None]]) -> dict[str, dict]:
    """The per-event bookkeeping the detector's windows must equal: every event added to its agent's and its team's
    window total and breakdown, last team / project seen, latest event time."""
    out: dict[str, dict] = {}
    for ts, cost, agent, team, project, model, task_type in events:
        task = task_type or "(none)"
        for kind, key, dims in (
            ("agent", agent, (("model", model), ("task_type", task), ("project", project))),
            ("team", team, (("agent", agent), ("model", model), ("task_type", task), ("project", project))),
        ):
            entity = out.setdefault(f"{kind}:{key}", {"open": {}, "last": 0, "team": None, "project": None})
            entity["team"], entity["last"] = team, max(entity["last"], ts)
            if kind == "agent":
                entity["project"] = project
            total, breakdown = entity["open"].setdefault(ts - ts % W, [Decimal(0), {}])
            entity["open"][ts - ts % W][0] = total + cost
            for dim in dims:
                breakdown[dim] = breakdown.get(dim, Decimal(0)) + cost
    return out


@pytest.mark.parametrize("seed", range(5))
def test_window_sums_equal_the_per_event_decimal_sums(seed: int) -> None:
    """The detector sums per combination of facts and folds later: the same Decimals (digits and exponent) as adding
    each event to each window, for costs at the priced 12-digit scale from a micro-dollar to 10**13 USD (sums stay
    within the 28-digit context: exact), agents that change team or project, tasks without a type, entity order."""
    rnd = random.Random(seed)
    events = []
    ts = T0
    for _ in range(3000):
        ts += rnd.randint(0, 2_000_000)
        agent = rnd.randrange(8)
        team = f"team-{agent % 3}" if rnd.random() > 0.05 else "team-moved"
        project = f"proj-{agent % 2}" if rnd.random() > 0.05 else "proj-moved"
        cost = Decimal(rnd.randint(1, 10 ** rnd.choice([6, 12, 18, 25]))).scaleb(-12)
        events.append((ts, cost, f"a{agent}", team, project, rnd.choice(["m1", "m2"]), rnd.choice([None, "chat"])))
    detector = AnomalyDetector()
    for event in events:
        detector.observe(*event)
    reference = _reference_windows(events)
    entities = detector.entities
    assert [f"{kind}:{key}" for kind, key in entities] == list(reference)  # first seen first (the judging order)
    for (kind, key), entity in entities.items():
        want = reference[f"{kind}:{key}"]
        assert (entity.team, entity.last_spend_us) == (want["team"], want["last"])
        assert entity.project == want["project"]
        assert set(entity.open) == set(want["open"])
        for start, (total, breakdown) in entity.open.items():
            want_total, want_breakdown = want["open"][start]
            assert total[0] == want_total and total[0].as_tuple() == want_total.as_tuple()
            assert {k: v.as_tuple() for k, v in breakdown.items()} == \
                {k: v.as_tuple() for k, v in want_breakdown.items()}
    # Events after a fold (an advance or a look at the entities) add to the same windows.
    more = [(ts + 1, Decimal("0.000000000001"), "a0", "team-0", "proj-0", "m1", None)]
    detector.observe(*more[0])
    reference = _reference_windows(events + more)
    entity = detector.entities[("agent", "a0")]
    start = (ts + 1) - (ts + 1) % W
    assert entity.open[start][0][0].as_tuple() == reference["agent:a0"]["open"][start][0].as_tuple()


def test_late_events_are_counted_once_windows_are_judged() -> None:
    detector = AnomalyDetector()
    detector.observe(T0 + 1, Decimal("1"), "a1", "team-x", "proj", "small", None)
    detector.advance(T0 + 2 * W + detector.config.grace_s * 1_000_000)
    detector.observe(T0 + 2, Decimal("1"), "a1", "team-x", "proj", "small", None)  # its window is judged
    detector.observe(T0 + 2 * W + 5, Decimal("2"), "a1", "team-x", "proj", "small", None)
    assert detector.late_events == 1
    assert detector.entities[("agent", "a1")].open[T0 + 2 * W][0][0] == Decimal("2")
