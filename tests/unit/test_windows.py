"""WindowAggregator and the window math, on hand-made series with hand-computed sums."""

from __future__ import annotations

from decimal import Decimal

import pytest

from stream_jobs.windows import (
    MINUTE_US,
    ClosedWindow,
    WindowAggregator,
    compute_closes_at,
    window_end,
    window_start,
)

pytestmark = pytest.mark.unit

S = 1_000_000  # one second in microseconds
T0 = 1_700_000_040 * S  # a minute boundary (1_700_000_040 is divisible by 60)


def add(
    agg: WindowAggregator,
    t: int,
    offset: int,
    *,
    agent: str = "a1",
    team: str = "t1",
    project: str = "p1",
    model: str = "openai/gpt-4o",
    cost: str = "0.10",
    tokens: tuple[int, int, int, int, int] = (100, 10, 40, 5, 2),
    ok: bool = True,
    attempt: int = 1,
    priced: bool = True,
) -> bool:
    return agg.add(t, agent, team, project, model, Decimal(cost), *tokens, ok, attempt, priced, offset)


def by_id(windows: list[ClosedWindow]) -> dict[str, ClosedWindow]:
    return {w.aggregate_id: w for w in windows}


def test_window_math_floors_and_is_epoch_aligned() -> None:
    assert T0 % MINUTE_US == 0
    assert window_start(T0, MINUTE_US) == T0
    assert window_start(T0 + 59_999_999, MINUTE_US) == T0
    assert window_start(T0 + MINUTE_US, MINUTE_US) == T0 + MINUTE_US
    assert window_end(T0 + 1, MINUTE_US) == T0 + MINUTE_US
    # Floor, not truncation, before the epoch.
    assert window_start(-1, MINUTE_US) == -MINUTE_US
    assert compute_closes_at(T0, MINUTE_US, 10 * S) == T0 + 70 * S


def test_window_closes_exactly_when_watermark_reaches_end_plus_grace() -> None:
    agg = WindowAggregator(3, grace_us=10 * S)
    assert add(agg, T0 + 5 * S, 100)
    assert add(agg, T0 + 69 * S, 101)  # watermark 69s < end + grace = 70s
    assert agg.poll_closed() == []
    assert add(agg, T0 + 70 * S - 1, 102)
    assert agg.poll_closed() == []
    assert add(agg, T0 + 70 * S, 103)  # watermark == end + grace: closes
    closed = agg.poll_closed()
    assert {w.window_start_us for w in closed} == {T0}
    assert agg.poll_closed() == []  # handed out once


def test_sums_per_dimension_and_deterministic_ids() -> None:
    agg = WindowAggregator(7, grace_us=0)
    add(agg, T0 + 1 * S, 10, agent="a1", team="t1", cost="0.10", tokens=(100, 10, 40, 5, 2))
    add(agg, T0 + 2 * S, 11, agent="a1", team="t1", cost="0.25", tokens=(50, 5, 0, 0, 0), ok=False, attempt=2)
    add(agg, T0 + 3 * S, 12, agent="a2", team="t1", model="anthropic/claude", cost="1.5", tokens=(10, 1, 0, 0, 1))
    add(agg, T0 + 4 * S, 13, agent="a2", team="t1", model="x/unknown", cost="0", priced=False, tokens=(7, 3, 0, 0, 0))
    add(agg, T0 + 61 * S, 14, agent="a3")  # next window; closes the first (grace 0)
    closed = by_id(agg.poll_closed())
    assert len(closed) == 2 + 1 + 1 + 3  # agents a1,a2; team t1; project p1; three models

    a1 = closed[f"{T0}:agent:a1:7"]
    assert (a1.window_start_us, a1.window_end_us, a1.dimension, a1.key, a1.partition) == (
        T0,
        T0 + MINUTE_US,
        "agent",
        "a1",
        7,
    )
    assert a1.cost_usd == Decimal("0.35")
    assert (a1.input_tokens, a1.output_tokens, a1.cache_read_tokens, a1.cache_write_tokens) == (150, 15, 40, 5)
    assert a1.reasoning_tokens == 2
    assert (a1.calls, a1.errors, a1.retries, a1.unpriced_calls) == (2, 1, 1, 0)
    assert (a1.min_offset, a1.max_offset) == (10, 11)

    a2 = closed[f"{T0}:agent:a2:7"]
    assert a2.cost_usd == Decimal("1.5")  # the unpriced call adds nothing, it is counted instead
    assert (a2.calls, a2.unpriced_calls, a2.input_tokens) == (2, 1, 17)
    assert (a2.min_offset, a2.max_offset) == (12, 13)

    team = closed[f"{T0}:team:t1:7"]
    assert team.cost_usd == Decimal("1.85")
    assert (team.calls, team.errors, team.retries, team.unpriced_calls) == (4, 1, 1, 1)
    assert (team.input_tokens, team.output_tokens, team.reasoning_tokens) == (167, 19, 3)
    assert (team.min_offset, team.max_offset) == (10, 13)
    assert closed[f"{T0}:project:p1:7"].calls == 4

    gpt = closed[f"{T0}:model:openai/gpt-4o:7"]
    assert (gpt.calls, gpt.cost_usd, gpt.max_offset) == (2, Decimal("0.35"), 11)
    unknown = closed[f"{T0}:model:x/unknown:7"]
    assert (unknown.calls, unknown.unpriced_calls, unknown.cost_usd) == (1, 1, Decimal(0))


def test_late_event_is_refused_and_does_not_reopen_the_window() -> None:
    agg = WindowAggregator(0, grace_us=10 * S)
    assert add(agg, T0 + 30 * S, 1)
    assert add(agg, T0 + 65 * S, 2)  # watermark 65s: window 0 still open (needs 70s)
    assert add(agg, T0 + 50 * S, 3)  # in grace: joins window 0
    assert add(agg, T0 + 71 * S, 4)  # closes window 0
    assert not add(agg, T0 + 59 * S, 5)  # late, even before poll_closed()
    closed = by_id(agg.poll_closed())
    w0 = closed[f"{T0}:agent:a1:0"]
    assert (w0.calls, w0.min_offset, w0.max_offset) == (2, 1, 3)
    assert not add(agg, T0 + 1 * S, 6)  # still late after the poll
    assert agg.poll_closed() == []  # nothing reopened
    assert agg.open_windows == 1


def test_out_of_order_within_grace_and_watermark_never_goes_back() -> None:
    agg = WindowAggregator(0, grace_us=30 * S)
    add(agg, T0 + 80 * S, 1)
    add(agg, T0 + 10 * S, 2)  # older window, within grace (watermark 80s < 90s)
    assert agg.watermark_us == T0 + 80 * S
    assert agg.min_open_offset() == 1
    add(agg, T0 + 95 * S, 3)  # closes window 0 (95 >= 60 + 30)
    closed = agg.poll_closed()
    assert {(w.window_start_us, w.min_offset, w.max_offset) for w in closed} == {(T0, 2, 2)}
    assert agg.min_open_offset() == 1


def test_min_open_offset_covers_closed_but_unpolled_windows() -> None:
    agg = WindowAggregator(0, grace_us=0)
    assert agg.min_open_offset() is None
    add(agg, T0 + 1 * S, 40)
    add(agg, T0 + 61 * S, 41)  # closes window 0, not yet polled
    assert agg.min_open_offset() == 40
    agg.poll_closed()
    assert agg.min_open_offset() == 41


def test_idle_close_waits_for_quiet_and_wall_clock() -> None:
    agg = WindowAggregator(0, grace_us=10 * S, idle_timeout_us=30 * S)
    add(agg, T0 + 20 * S, 1)
    wall = T0 + 21 * S
    assert not agg.close_idle(wall)  # first sight of this watermark: start the quiet timer
    assert not agg.close_idle(wall + 29 * S)  # quiet, but not long enough
    # Quiet long enough, but the window's end + grace (70s) is not yet <= now - idle_timeout.
    assert not agg.close_idle(T0 + 99 * S)  # 99 - 30 - 10 = 59s < 60s window end
    assert agg.poll_closed() == []
    assert agg.close_idle(T0 + 100 * S)  # 100 - 30 - 10 = 60s: window 0 closes
    assert [w.window_start_us for w in agg.poll_closed()][:1] == [T0]
    assert not add(agg, T0 + 59 * S, 2)  # late now
    assert not agg.close_idle(T0 + 100 * S)  # nothing more to close


def test_idle_close_does_not_fire_while_the_watermark_moves() -> None:
    # A lagging consumer reads old events: the wall clock is far ahead, but the partition is not quiet.
    agg = WindowAggregator(0, grace_us=10 * S, idle_timeout_us=30 * S)
    wall = T0 + 3600 * S
    for i in range(10):
        add(agg, T0 + i * 5 * S, i)
        assert not agg.close_idle(wall + i * 60 * S)
    assert agg.poll_closed() == []


def test_restored_horizon_makes_old_windows_late() -> None:
    agg = WindowAggregator(0, closed_before_us=T0 + MINUTE_US + 5)  # rounded down to a boundary
    assert agg.closed_before_us == T0 + MINUTE_US
    assert agg.polled_before_us == T0 + MINUTE_US
    assert not add(agg, T0 + 59 * S, 1)
    assert add(agg, T0 + 60 * S, 2)


def test_partition_is_part_of_the_id_and_windows_come_out_in_order() -> None:
    agg = WindowAggregator(12, grace_us=3 * MINUTE_US)
    for minute in (2, 0, 1):
        assert add(agg, T0 + minute * MINUTE_US + S, minute, agent=f"a{minute}")
    add(agg, T0 + 6 * MINUTE_US, 9)
    closed = [w for w in agg.poll_closed() if w.dimension == "agent"]
    assert [w.aggregate_id for w in closed] == [
        f"{T0 + m * MINUTE_US}:agent:a{m}:12" for m in (0, 1, 2)
    ]


def test_rejects_bad_configuration() -> None:
    with pytest.raises(ValueError):
        WindowAggregator(0, size_us=0)
    with pytest.raises(ValueError):
        WindowAggregator(0, grace_us=-1)
