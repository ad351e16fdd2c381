"""Regenerate the protobuf and grpclib stubs in this folder: `python -m proto.generate`.

Needs grpcio-tools (pinned in pyproject's dev extra, together with protobuf) and grpclib.
Generated imports are rewritten to relative ones so that the stubs live inside the `proto` package.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROTOS = sorted(p.name for p in HERE.glob("*.proto"))


def generate(out: Path = HERE) -> list[Path]:
    from grpc_tools import protoc  # dev dependency only
    import grpc_tools

    include = str(Path(grpc_tools.__file__).parent / "_proto")
    # grpclib's protoc plugin is installed beside the interpreter (venv bin/).
    plugin = Path(sys.executable).parent / "protoc-gen-grpclib_python"
    args = ["protoc", f"-I{HERE}", f"-I{include}", f"--plugin=protoc-gen-grpclib_python={plugin}",
            f"--python_out={out}", f"--grpclib_python_out={out}", *PROTOS]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    local = {Path(p).stem for p in PROTOS}
    written = []
    for path in sorted(out.glob("*_pb2.py")) + sorted(out.glob("*_grpc.py")):
        text = path.read_text()
        for mod in local:
            text = re.sub(rf"^import {mod}_pb2\b", f"from . import {mod}_pb2", text, flags=re.M)
        path.write_text(text)
        written.append(path)
    return written


if __name__ == "__main__":
    for p in generate(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE):
        print(p.name)
