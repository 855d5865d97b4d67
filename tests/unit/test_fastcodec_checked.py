"""schemas.fastcodec.build_checked_encoder on a small schema of its own: what the guard proves (an exact int >= 0)
shortens the generated code but never the outcome. Every accepted record has the bytes of build_fast_codec's
encoder, every refused one breaks the guard; the producer's own checked encoder is compared with its slow path in
tests/unit/test_producer_fastpath.py."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from schemas.fastcodec import build_checked_encoder, build_fast_codec

pytestmark = pytest.mark.unit

SCHEMA: dict[str, Any] = {
    "type": "record", "name": "Probe", "namespace": "test.checked",
    "fields": [
        {"name": "a", "type": "long"},
        {"name": "b", "type": "long"},
        {"name": "c", "type": "long", "default": 0},
        {"name": "tags", "type": {"type": "map", "values": "string"}, "default": {}},
    ],
}
# a: an int >= 0 (proven, so its encoding skips the sign test); b: any int (negative too); c <= a, c + 0 <= a.
GUARD = ["{a}.__class__ is int", "{a} >= 0", "{b}.__class__ is int", "{c}.__class__ is int",
         "{c} <= {a}", "{c} + {c} <= {a} + {a}"]
ENTRY = "{key}.__class__ is str and {value}.__class__ is str and len({value}) <= 3"


def _holds(rec: dict[str, Any]) -> bool:
    a, b, c = rec["a"], rec["b"], rec.get("c", 0)
    tags = rec.get("tags", {})
    return (type(a) is int and a >= 0 and type(b) is int and type(c) is int and c <= a
            and all(type(k) is str and type(v) is str and len(v) <= 3 for k, v in tags.items()))


@pytest.mark.parametrize("with_c", [False, True])
def test_accepted_records_have_the_codecs_bytes_and_refused_ones_break_the_guard(with_c: bool) -> None:
    checked = build_checked_encoder(SCHEMA, guard=GUARD, item_guards={"tags": ENTRY})
    codec = build_fast_codec(SCHEMA)
    ints = [0, 1, 63, 64, 16383, 16384, 2**27 - 1, 2**27, 2**40, 2**63 - 1, -1, -64, -65, -16384, -(2**27), -(2**63)]
    tag_maps: list[dict[Any, Any]] = [{}, {"k": "v"}, {"k": "v"}, {"k": "long"}, {"k": "v", "j": "w"}, {1: "v"}]
    seen = 0
    for a, b, tags in itertools.product(ints, ints, tag_maps):
        for c in ([0, 3, a, -5] if with_c else [None]):
            rec: dict[str, Any] = {"a": a, "b": b, "tags": dict(tags)}
            if c is not None:
                rec["c"] = c
            got = checked.prepare(rec)
            if got is None:
                assert not _holds(rec), rec
                continue
            assert _holds(rec), rec
            assert got == codec.encode({"c": 0, **rec}), rec
            seen += 1
    assert seen > 300
