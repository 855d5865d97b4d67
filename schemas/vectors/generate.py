"""Write the shared test vectors: for each example payload ``schemas/examples/<name>.json``, the single-object bytes
the Python codec writes for it, as ``schemas/vectors/<name>.bin``. Also writes ``fingerprints.json`` (record name ->
the 8 fingerprint bytes in hex, and the parsing canonical form) so other languages can check those first.

Run from the repository root after changing a schema or an example, and commit the result::

    python schemas/vectors/generate.py          # rewrite the vectors
    python schemas/vectors/generate.py --check  # exit 1 if any stored vector differs (what CI would run)

The Python suite (tests/unit/test_vectors.py) and the TypeScript suite (producers/typescript/test/vectors.test.ts)
both compare their encoders with these bytes, byte for byte.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from fastavro import parse_schema  # noqa: E402
from fastavro.schema import to_parsing_canonical_form  # noqa: E402

from schemas.loader import SCHEMA_NAMES, load_schema  # noqa: E402
from schemas.models import EXAMPLES_DIR, example_record_name, load_example  # noqa: E402
from schemas.wire import AvroCodec  # noqa: E402

VECTORS_DIR = Path(__file__).resolve().parent


def compute_vectors() -> dict[str, bytes]:
    """File name -> bytes of every vector (the .bin files and fingerprints.json), computed from the examples."""
    codec = AvroCodec()
    out: dict[str, bytes] = {}
    for path in sorted(EXAMPLES_DIR.glob("*.json")):
        record = load_example(path.name)
        out[f"{path.stem}.bin"] = codec.encode(record.to_avro_dict(), example_record_name(path))
    fingerprints = {
        name: {
            "fingerprint": codec.fingerprint(name).hex(),
            "canonical_form": to_parsing_canonical_form(parse_schema(load_schema(name))),
        }
        for name in SCHEMA_NAMES
    }
    out["fingerprints.json"] = (json.dumps(fingerprints, indent=2, sort_keys=True) + "\n").encode("utf-8")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing; exit 1 on a difference")
    args = parser.parse_args(argv)
    vectors = compute_vectors()
    stale = sorted(
        {p.name for p in VECTORS_DIR.glob("*.bin")} - set(vectors)
    )  # vectors of examples that no longer exist
    if args.check:
        differ = [name for name, data in vectors.items()
                  if not (VECTORS_DIR / name).exists() or (VECTORS_DIR / name).read_bytes() != data]
        for name in differ + stale:
            print(f"stale vector: schemas/vectors/{name}", file=sys.stderr)
        return 1 if differ or stale else 0
    for name, data in vectors.items():
        (VECTORS_DIR / name).write_bytes(data)
    for name in stale:
        (VECTORS_DIR / name).unlink()
    print(f"wrote {len(vectors)} vectors to {VECTORS_DIR}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
