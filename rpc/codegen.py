"""Regenerate the protobuf/gRPC Python modules next to each ``.proto`` in ``rpc/proto``.

Run ``python -m rpc.codegen`` after editing a ``.proto``; the generated files are committed
(so the runtime needs no compiler) and a test checks they match their sources.
"""

from __future__ import annotations

import sys
from pathlib import Path

from infra import ROOT

PROTO_DIR = ROOT / "rpc" / "proto"


def generate(out_dir: Path = ROOT) -> None:
    from grpc_tools import protoc

    protos = sorted(str(p.relative_to(ROOT)) for p in PROTO_DIR.glob("*.proto"))
    args = [
        "protoc",
        f"-I{ROOT}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT)
