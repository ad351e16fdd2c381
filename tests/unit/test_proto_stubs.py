"""The committed stubs are exactly what `python -m proto.generate` produces from the .proto files."""
from pathlib import Path

import proto
from proto.generate import generate

HERE = Path(proto.__file__).parent


def test_generated_stubs_are_up_to_date(tmp_path):
    fresh = {p.name: p.read_text() for p in generate(tmp_path)}
    assert fresh, "nothing was generated"
    for name, text in fresh.items():
        committed = HERE / name
        assert committed.exists(), f"{name} is not committed: run python -m proto.generate"
        assert committed.read_text() == text, f"{name} is stale: run python -m proto.generate"
