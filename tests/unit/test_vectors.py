"""Shared test vectors (schemas/vectors): the Python codec writes exactly the stored bytes for every example payload
and reads them back to the example. The TypeScript SDK's suite checks the same files, so both SDKs are held to one
byte sequence per example (producers/typescript/test/vectors.test.ts)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from schemas.loader import SCHEMA_NAMES
from schemas.models import EXAMPLES_DIR, MODELS, example_record_name, load_example
from schemas.vectors.generate import VECTORS_DIR, compute_vectors
from schemas.wire import SINGLE_OBJECT_MAGIC, AvroCodec

pytestmark = pytest.mark.unit

EXAMPLES = sorted(path.name for path in EXAMPLES_DIR.glob("*.json"))


@pytest.fixture(scope="module")
def codec() -> AvroCodec:
    return AvroCodec()


def test_every_example_has_a_vector_and_no_vector_is_orphaned() -> None:
    stored = {path.stem for path in VECTORS_DIR.glob("*.bin")}
    assert stored == {Path(name).stem for name in EXAMPLES}


@pytest.mark.parametrize("example", EXAMPLES)
def test_encoding_the_example_gives_the_stored_bytes(codec: AvroCodec, example: str) -> None:
    record = load_example(example)
    expected = (VECTORS_DIR / f"{Path(example).stem}.bin").read_bytes()
    assert codec.encode(record.to_avro_dict(), example_record_name(Path(example))) == expected


@pytest.mark.parametrize("example", EXAMPLES)
def test_decoding_the_stored_bytes_gives_the_example(codec: AvroCodec, example: str) -> None:
    data = (VECTORS_DIR / f"{Path(example).stem}.bin").read_bytes()
    assert data[:2] == SINGLE_OBJECT_MAGIC
    name, decoded = codec.decode(data)
    assert name == example_record_name(Path(example))
    assert MODELS[name].from_avro_dict(decoded) == load_example(example)


def test_fingerprints_file_matches_the_codec(codec: AvroCodec) -> None:
    stored = json.loads((VECTORS_DIR / "fingerprints.json").read_text(encoding="utf-8"))
    assert set(stored) == set(SCHEMA_NAMES)
    for name, entry in stored.items():
        assert bytes.fromhex(entry["fingerprint"]) == codec.fingerprint(name)


def test_generator_reproduces_every_stored_file() -> None:
    # A schema or example changed without regenerating: run `python schemas/vectors/generate.py` and commit.
    for name, data in compute_vectors().items():
        assert (VECTORS_DIR / name).read_bytes() == data, f"schemas/vectors/{name} is stale"


TS_FIXTURES = Path(__file__).resolve().parents[2] / "producers" / "typescript" / "test" / "fixtures"


@pytest.mark.parametrize(("generator", "output"), [
    ("validation_cases.py", "validation_cases.json"),
    ("adapter_cases.py", "adapter_expected.json"),
    ("control_cases.py", "control_cases.json"),
])
def test_typescript_parity_fixtures_are_current(generator: str, output: str) -> None:
    # What the Python SDK reports (validation problems, adapter usage, signatures), stored for the TypeScript suite.
    # Stale after a rule, adapter or signing change: run the generator named here and commit its output.
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"ts_fixture_{Path(generator).stem}", TS_FIXTURES / generator)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert (TS_FIXTURES / output).read_text(encoding="utf-8") == module.render(), (
        f"producers/typescript/test/fixtures/{output} is stale: run .venv/bin/python "
        f"producers/typescript/test/fixtures/{generator}"
    )
