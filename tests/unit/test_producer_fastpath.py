"""The producer's one-pass path (generated check + fill + encode, producers.producer.build_usage_fast_path) against
the slow path it shortcuts (complete_usage_record, check_usage_dict, AvroCodec.encode): for every event, either the
one-pass path declines (None) or it returns the very (event_id, key, value) the slow path returns; it never accepts
an event the slow path refuses. Events: hand-picked edge cases, seeded random ones, every shape of key order, and
rows of the shared aider trace when present. Speed is measured by ``finops bench producer``, never asserted here.
"""

from __future__ import annotations

import random
import string
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest

from producers.producer import BatchValidationFailed, UsageProducer, new_event_id, new_event_ids
from producers.replay import RejectsWriter, load_mapping, replay_file
from schemas import fastcodec
from schemas.errors import EncodeError, ValidationFailed
from schemas.fastcodec import build_fast_codec, encode_long
from schemas.loader import load_schema
from schemas.models import to_micros
from schemas.wire import AvroCodec

pytestmark = pytest.mark.unit

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
ROOT = Path(__file__).resolve().parents[2]
TRACES = ROOT.parent / "shared" / "data" / "traces"
AIDER_CSV = TRACES / "aider_sample_analytics" / "message_send.csv"
AIDER_MAPPING = ROOT / "infra" / "replay" / "aider.yaml"
CODEC = AvroCodec()


class _StrSub(str):
    pass


class _IntSub(int):
    pass


@pytest.fixture
def producers() -> Any:
    # Nothing listens on port 1: nothing is sent; both producers only prepare.
    fast = UsageProducer("127.0.0.1:1", "agent.usage.v1", "unit-svc", None, clock=lambda: NOW, register_atexit=False)
    slow = UsageProducer("127.0.0.1:1", "agent.usage.v1", "unit-svc", None, clock=lambda: NOW, register_atexit=False)
    slow._fast = slow._fast_all = None
    yield fast, slow
    fast.close(timeout=0)
    slow.close(timeout=0)


def _event(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"agent_id": "a", "team": "t", "project": "p", "provider": "openai", "model": "gpt-4o",
                            "input_tokens": 10, "output_tokens": 5}
    base.update(over)
    return {k: v for k, v in base.items() if v is not _DROP}


_DROP = object()


def _one_pass(producer: UsageProducer, event: Any) -> tuple[str, bytes, bytes] | None:
    assert producer._fast is not None
    micros = to_micros(NOW)
    result: tuple[str, bytes, bytes] | None = producer._fast(event, new_event_id, producer.source,
                                                             producer._source_bytes, NOW, micros, encode_long(micros))
    return result


def _slow(producer: UsageProducer, event: Any) -> tuple[str, bytes, bytes] | Exception:
    try:
        return producer.prepare(event)
    except (ValidationFailed, EncodeError) as err:
        return err


def _agree(producers: Any, event: Any) -> bool:
    """Assert the two paths agree on ``event``; True when the one-pass path took it."""
    fast, slow = producers
    before = dict(event) if isinstance(event, Mapping) else None
    got = _one_pass(fast, event)
    if before is not None:
        assert dict(event) == before, "the one-pass path changed the caller's event"
    if got is None:
        return False
    # The one-pass path drew a new id when the event had none; the slow path given that id must say the same.
    given = event if "event_id" in event and event["event_id"] is not None else {**event, "event_id": got[0]}
    want = _slow(slow, given)
    assert not isinstance(want, Exception), f"one-pass accepted what the slow path refuses: {want}"
    assert got == want
    assert CODEC.decode(got[2])[1]["event_id"] == got[0]
    return True


EDGE_CASES: list[dict[str, Any]] = [
    _event(),
    _event(event_id=str(uuid.uuid4()), source="svc-x", occurred_at=NOW - timedelta(days=3)),
    _event(occurred_at=NOW + timedelta(minutes=4, seconds=59)),
    _event(occurred_at=NOW + timedelta(minutes=5, microseconds=1)),  # too far ahead: refused
    _event(occurred_at=datetime(2026, 3, 1, 14, 0, tzinfo=timezone(timedelta(hours=3)))),
    _event(occurred_at=NOW.replace(tzinfo=None)),  # naive: refused
    _event(occurred_at="2026-03-01T11:00:00+00:00"),  # ISO text: the slow path converts it
    _event(occurred_at=to_micros(NOW)),  # an int is not a datetime: refused
    _event(task_id="t1", parent_task_id="t0", task_type="plan", environment="prod", prompt_hash="ab" * 32),
    _event(task_id=None, parent_task_id=None, latency_ms=None, reported_cost=None, prompt_hash=None),
    _event(task_id=5),
    _event(latency_ms=0), _event(latency_ms=2**40), _event(latency_ms=-1), _event(latency_ms=True),
    _event(reported_cost=Decimal("0.0125")), _event(reported_cost=Decimal("-3.5")),
    _event(reported_cost=Decimal("12345678901234567890.123456789012")),
    _event(reported_cost=Decimal("0.0000000000001")),  # 13 decimals: the encoder refuses it
    _event(reported_cost=Decimal("NaN")), _event(reported_cost="0.5"), _event(reported_cost=0.5),
    _event(reported_cost=7),
    _event(tags={}), _event(tags=None), _event(tags={"env": "prod", "ünï": "cødé ✓"}),
    _event(tags={f"k{i}": "v" for i in range(64)}), _event(tags={f"k{i}": "v" for i in range(65)}),
    _event(tags={"k" * 256: "v" * 256}), _event(tags={"k" * 257: "v"}), _event(tags={"k": "v" * 257}),
    _event(tags={"k": 1}), _event(tags={1: "v"}), _event(tags=[("k", "v")]), _event(tags=MappingProxyType({"k": "v"})),
    _event(agent_id="agent-ünïcødé-☃", team="équipe", model="模型"),
    _event(agent_id=""), _event(team="   "), _event(project=None), _event(provider=_DROP), _event(model=3),
    _event(agent_id=_StrSub("sub")), _event(input_tokens=_IntSub(10)),
    _event(input_tokens=16383, output_tokens=16384), _event(input_tokens=2**27 - 1, output_tokens=2**27),
    _event(input_tokens=2**27 + 1, cache_read_tokens=2**26), _event(input_tokens=2**63 - 1),
    _event(input_tokens=2**63), _event(input_tokens=-1), _event(input_tokens=True), _event(input_tokens=10.0),
    _event(cache_read_tokens=6, cache_write_tokens=4), _event(cache_read_tokens=6, cache_write_tokens=5),
    _event(cache_read_tokens=10), _event(cache_read_tokens=11), _event(cache_read_tokens=-1),  # shape w/o cache_write
    _event(cache_read_tokens=10, input_tokens=-1), _event(cache_read_tokens=_IntSub(3)),
    _event(cache_write_tokens=4, cache_write_1h_tokens=4), _event(cache_write_tokens=4, cache_write_1h_tokens=5),
    _event(reasoning_tokens=5), _event(reasoning_tokens=6), _event(input_audio_tokens=11),
    _event(output_audio_tokens=5), _event(cache_read_tokens=3, cache_audio_read_tokens=4), _event(image_tokens=10),
    _event(web_search_calls=3), _event(web_search_calls=-1), _event(requests=0), _event(requests=2**31),
    _event(attempt=0), _event(attempt=2), _event(status="timeout"), _event(status="weird"), _event(status=None),
    _event(schema_version=1), _event(schema_version="1"),
    _event(event_id=str(uuid.uuid4()).upper()), _event(event_id=uuid.uuid4()), _event(event_id="not-a-uuid"),
    _event(event_id=None, source=None, occurred_at=None), _event(source=""), _event(source=" "),
    _event(colour="blue"),  # unknown field
]


@pytest.mark.parametrize("event", EDGE_CASES, ids=range(len(EDGE_CASES)))
def test_one_pass_path_gives_the_slow_paths_bytes_or_declines(producers: Any, event: dict[str, Any]) -> None:
    _agree(producers, event)


def test_one_pass_path_takes_the_common_events(producers: Any) -> None:
    common = [EDGE_CASES[0], EDGE_CASES[1], EDGE_CASES[8], _event(tags={"env": "prod"}, latency_ms=120)]
    assert all(_agree(producers, e) for e in common)


def _random_event(rng: random.Random) -> dict[str, Any]:
    def text() -> str:
        alphabet = string.ascii_letters + string.digits + " -_.éü☃模"
        return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))

    def count() -> int:
        return rng.choice([0, 1, 127, 128, 16383, 16384, 2**27 - 1, 2**27, 2**31, 2**62, -1, rng.randint(0, 10**6)])

    inp = rng.choice([rng.randint(0, 10**6), 2**27, 2**40])
    event: dict[str, Any] = {"agent_id": text() or "a", "team": text() or "t", "project": text() or "p",
                             "provider": rng.choice(["openai", "anthropic", ""]), "model": text() or "m",
                             "input_tokens": inp, "output_tokens": count()}
    optional: dict[str, Any] = {
        "cache_read_tokens": rng.randint(0, max(inp // 2, 0)), "cache_write_tokens": rng.randint(0, 3),
        "reasoning_tokens": count(), "web_search_calls": count(), "requests": count(), "attempt": count(),
        "task_id": rng.choice([None, text()]), "environment": rng.choice([None, "prod"]),
        "latency_ms": rng.choice([None, count()]), "status": rng.choice(["ok", "error", "rate_limited", "nope"]),
        "reported_cost": rng.choice([None, Decimal(rng.randint(-10**9, 10**9)).scaleb(-rng.randint(0, 13))]),
        "tags": rng.choice([{}, {text(): text() for _ in range(rng.randint(0, 4))}]),
        "event_id": rng.choice([None, str(uuid.UUID(int=rng.getrandbits(128), version=4))]),
        "occurred_at": rng.choice([None, NOW - timedelta(seconds=rng.randint(-400, 10**6))]),
        "source": rng.choice([None, text()]),
    }
    for name in rng.sample(sorted(optional), rng.randint(0, len(optional))):
        event[name] = optional[name]
    keys = list(event)
    rng.shuffle(keys)  # another key order is another shape
    return {k: event[k] for k in keys}


def test_seeded_random_events_agree_and_most_take_the_one_pass_path(producers: Any) -> None:
    rng = random.Random(17)
    taken = sum(_agree(producers, _random_event(rng)) for _ in range(3000))
    assert taken > 300  # the comparison is not vacuous


def _rebuild_encoders(producers: Any) -> None:
    """Give the fast producer encoders built now, under the limits a test patched in (they are read at build)."""
    fast, _ = producers
    other = UsageProducer("127.0.0.1:1", "t", "unit-svc", None, register_atexit=False)
    fast._fast, fast._fast_all = other._fast, other._fast_all
    other.close(timeout=0)


def test_beyond_the_shape_bound_the_generic_function_still_agrees(producers: Any,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fastcodec, "_MAX_SHAPES", 0)
    _rebuild_encoders(producers)
    rng = random.Random(5)
    assert sum(_agree(producers, _random_event(rng)) for _ in range(500)) > 50
    assert _agree(producers, MappingProxyType(_event(tags={"k": "v"})))  # not a dict: the generic function


def test_emit_many_batch_of_mixed_paths_is_the_per_event_result(producers: Any) -> None:
    fast, slow = producers
    events = [dict(e, event_id=str(uuid.UUID(int=i, version=4))) for i, e in enumerate(
        [_event(), _event(occurred_at="2026-03-01T11:00:00+00:00"), _event(reported_cost="0.25"),
         _event(tags={"a": "b"}), _event(event_id=uuid.uuid4())])]
    events[4]["event_id"] = uuid.UUID(int=99, version=4)
    assert fast.prepare_many(events) == [slow.prepare(e) for e in events]


def test_emit_many_refusal_names_every_bad_index_whichever_path_saw_it(producers: Any) -> None:
    fast, _ = producers
    with pytest.raises(BatchValidationFailed) as caught:
        fast.prepare_many([_event(), _event(input_tokens=-1), _event(), _event(colour="x", team=" ")])
    assert caught.value.indexes() == [1, 3]
    assert {p.field for p in caught.value.problems} == {"1.input_tokens", "3.colour", "3.team"}
    assert fast.stats().invalid == 2


def test_a_naive_clock_takes_the_slow_path_which_names_the_problem(tmp_path: Path) -> None:
    p = UsageProducer("127.0.0.1:1", "t", "unit-svc", None, clock=lambda: NOW.replace(tzinfo=None),
                      register_atexit=False)
    try:
        with pytest.raises(ValidationFailed, match="occurred_at"):
            p.prepare(_event())
        with pytest.raises(BatchValidationFailed, match="event 0"):
            p.prepare_many([_event()])
    finally:
        p.close(timeout=0)


@pytest.mark.parametrize("value", [0, 1, 63, 64, 8191, 8192, 16383, 16384, 2**27 - 1, 2**27, 2**27 + 1, 2**63 - 1,
                                   -1, -64, -65, -(2**27), -(2**63)])
def test_inline_long_varints_match_the_table_encoder(value: int) -> None:
    codec = build_fast_codec(load_schema("UsageEvent"))
    record = dict(_event(input_tokens=value), event_id=str(uuid.uuid4()), source="s", occurred_at=0)
    body = codec.encode(record)
    assert codec.decode(body)[0]["input_tokens"] == value
    assert encode_long(value) in body


@pytest.mark.skipif(not AIDER_CSV.exists(), reason=f"shared trace absent: {AIDER_CSV} (../shared/data/traces)")
def test_events_of_a_real_trace_agree_and_take_the_one_pass_path(producers: Any, tmp_path: Path) -> None:
    events: list[dict[str, Any]] = []
    replay_file(AIDER_CSV, load_mapping(AIDER_MAPPING), events.append, now=NOW, limit=3000,
                rejects=RejectsWriter(tmp_path / "rejects.jsonl"))  # rows the mapping refuses are not events
    assert events
    taken = sum(_agree(producers, e) for e in events)
    assert taken == len(events)


def test_memoised_attribution_is_checked_once_per_value_and_only_for_exact_strings(producers: Any) -> None:
    # The same attribution values, first valid (remembered), then a blank one and a str subclass: each decided anew.
    assert _agree(producers, _event(agent_id="m1", team="tm"))
    assert _agree(producers, _event(agent_id="m1", team="tm", input_tokens=3))
    assert not _agree(producers, _event(agent_id="m1", team=" "))
    assert not _agree(producers, _event(agent_id=_StrSub("m1"), team="tm"))
    assert _agree(producers, {"team": "tm", **_event(agent_id="m1")})  # another key order: another shape, same memo


def test_batch_ids_are_random_version_4_uuids() -> None:
    ids = new_event_ids(2000)
    assert len(set(ids)) == 2000 and new_event_ids(0) == []
    assert all(str(uuid.UUID(i)) == i and uuid.UUID(i).version == 4 and uuid.UUID(i).variant == uuid.RFC_4122
               for i in ids)
    assert {i[19] for i in ids} == set("89ab") and {i[14] for i in ids} == {"4"}


class _LiarStr(str):
    """Equal to any string and hashed as "prod": a memo hit by equality alone would take another map's bytes."""

    def __eq__(self, other: object) -> bool:
        return True

    def __hash__(self) -> int:
        return hash("prod")


def test_memoised_tags_are_the_slow_paths_bytes_and_only_hit_for_exact_strings(producers: Any) -> None:
    # The first map is checked, encoded and remembered; equal maps then take the remembered bytes; anything that
    # only compares equal (a str subclass) is declined, and the slow path decides it.
    assert _agree(producers, _event(tags={"env": "prod", "region": "eu"}))
    assert _agree(producers, _event(tags={"env": "prod", "region": "eu"}, input_tokens=7))  # a hit: same bytes
    assert _agree(producers, _event(tags={"region": "eu", "env": "prod"}))  # other order: other bytes, agreed
    assert not _agree(producers, _event(tags={_StrSub("env"): "prod", "region": "eu"}))
    assert not _agree(producers, _event(tags={"env": _StrSub("prod"), "region": "eu"}))
    assert not _agree(producers, _event(tags={"env": _LiarStr("dev"), "region": "eu"}))
    assert not _agree(producers, _event(tags={"env": "prod", "region": "e" * 257}))  # too long: never equal
    assert not _agree(producers, _event(tags={"env": "prod", "region": 1}))
    fast, _ = producers
    got = _one_pass(fast, _event(tags={"env": "prod", "region": "eu"}))
    assert got is not None and CODEC.decode(got[2])[1]["tags"] == {"env": "prod", "region": "eu"}


def test_seeded_random_events_with_repeating_tags_agree(producers: Any) -> None:
    rng = random.Random(23)
    pool: list[dict[Any, Any]] = [{}, {"env": "prod"}, {"env": "prod", "team": "x"}, {"k" * 256: "v"},
                                  {"env": "dev", "ünï": "cødé ✓"}, {"env": _StrSub("prod")}, {"k": "v" * 257}]
    taken = 0
    for _ in range(2000):
        event = _random_event(rng)
        if "tags" in event:
            event["tags"] = dict(rng.choice(pool))  # a fresh dict of repeated entries: memo hits
        taken += _agree(producers, event)
    assert taken > 200


def test_beyond_the_memo_bound_tags_are_still_encoded_and_agree(producers: Any,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fastcodec, "_MEMO_MAX", 2)
    _rebuild_encoders(producers)
    assert all([_agree(producers, _event(tags={"n": str(i % 5)})) for i in range(20)])


def test_filled_ids_of_a_batch_and_of_one_event_are_the_slow_paths_bytes(producers: Any) -> None:
    # The one-pass path writes a new id's Avro length as a constant (36 characters): the bytes must be those the
    # slow path writes for the same id, for a batch's ids (new_event_ids) and a single event's (new_event_id).
    fast, slow = producers
    rng = random.Random(41)
    events = [_random_event(rng) for _ in range(400)]
    for event in events:
        event.pop("event_id", None)
    valid = [e for e in events if not isinstance(_slow(slow, dict(e, event_id=new_event_id())), Exception)]
    assert len(valid) > 40
    batch = fast.prepare_many(valid)
    assert batch == [slow.prepare(dict(e, event_id=got[0])) for e, got in zip(valid, batch,
                                                                                              strict=True)]
    single = [fast.prepare(e) for e in valid]
    assert single == [slow.prepare(dict(e, event_id=got[0])) for e, got in zip(valid, single, strict=True)]
    assert all(len(got[0]) == 36 and CODEC.decode(got[2])[1]["event_id"] == got[0] for got in batch + single)


def test_guard_parts_are_simplified_only_by_what_the_guard_proves() -> None:
    proven = {"v8", "v10"}
    assert fastcodec._given_whole("(0) <= v8", proven) is None  # v8 is an int >= 0 whenever the guard holds
    assert fastcodec._given_whole("(-3) <= v8", proven) is None
    assert fastcodec._given_whole("(1) <= v8", proven) == "(1) <= v8"
    assert fastcodec._given_whole("(0) <= v9", proven) == "(0) <= v9"  # v9 is not proven
    assert fastcodec._given_whole("v10 + (0) <= v8", proven) == "v10 <= v8"
    assert fastcodec._given_whole("(0) + v10 <= v8", proven) == "v10 <= v8"
    assert fastcodec._given_whole("v9 + (0) <= v8", proven) == "v9 + (0) <= v8"
    assert fastcodec._given_whole("v10 + (0) * 2 <= v8", proven) == "v10 + (0) * 2 <= v8"
    assert fastcodec._given_whole("(0) <= v8", set()) == "(0) <= v8"
