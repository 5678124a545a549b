"""Regenerate the committed gRPC stubs of the Shield and EdgeAgent services.

Usage: python plugins/generate_protos.py [--check]

The stubs are committed so the demo and the plugins run without grpcio-tools;
``--check`` (run by the test suite) fails when they differ from the .proto files.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PACKAGE = Path("otel_cb_services") / "protos"


def generate(out: Path) -> list[Path]:
    from grpc_tools import protoc

    protos = sorted((HERE / PACKAGE).glob("*.proto"))
    for proto in protos:
        args = ["protoc", f"-I{HERE}", f"--python_out={out}", f"--pyi_out={out}", f"--grpc_python_out={out}",
                str(proto.relative_to(HERE))]
        if protoc.main(args) != 0:
            raise SystemExit(f"protoc failed on {proto}")
    return sorted((out / PACKAGE).glob("*_pb2*.py*"))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--check", action="store_true", help="only compare with the committed stubs")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        generated = generate(Path(tmp))
        stale = []
        for path in generated:
            committed = HERE / PACKAGE / path.name
            if args.check:
                if not committed.exists() or not filecmp.cmp(path, committed, shallow=False):
                    stale.append(path.name)
            else:
                shutil.copyfile(path, committed)
    if stale:
        print(f"stale gRPC stubs: {', '.join(stale)}; run python plugins/generate_protos.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
