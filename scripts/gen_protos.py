#!/usr/bin/env python3
"""Regenerate the gRPC/protobuf stubs under src/dew_csi/_proto from our .proto files.

    python scripts/gen_protos.py              # rewrite the committed stubs in src/
    python scripts/gen_protos.py --out DIR    # write them under DIR instead (drift check)

Every .proto below src/dew_csi/_proto is compiled with `-I src`, so a file's import path
mirrors its Python package and the generated `_pb2_grpc.py` imports need no patching.
Type stubs come from mypy-protobuf (`--mypy_out`, `--mypy_grpc_out`), whose plugins live
next to this interpreter, so that directory is put first on PATH.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
SOURCE_ROOT = REPO_ROOT / "src"
PROTO_PACKAGE_DIR = SOURCE_ROOT / "dew_csi" / "_proto"


def proto_sources() -> list[Path]:
    """All our .proto files, sorted so the protoc command line is stable."""
    return sorted(PROTO_PACKAGE_DIR.rglob("*.proto"))


def generate(out_dir: Path) -> None:
    """Run protoc once over every .proto, writing .py/.pyi stubs under out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    protos = proto_sources()
    if not protos:
        raise SystemExit(f"no .proto files under {PROTO_PACKAGE_DIR}")
    # Paths relative to the include root keep absolute machine paths out of the output.
    relative_protos = [str(p.relative_to(SOURCE_ROOT)) for p in protos]
    command = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        "-I",
        ".",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--mypy_out={out_dir}",
        f"--mypy_grpc_out={out_dir}",
        *relative_protos,
    ]
    env = dict(os.environ)
    interpreter_bin = str(Path(sys.executable).parent)
    env["PATH"] = interpreter_bin + os.pathsep + env.get("PATH", "")
    completed = subprocess.run(command, cwd=SOURCE_ROOT, env=env, check=False)
    if completed.returncode != 0:
        raise SystemExit(f"protoc failed with exit code {completed.returncode}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--out",
        type=Path,
        default=SOURCE_ROOT,
        help="root to write the generated tree into (default: src, i.e. the committed stubs)",
    )
    args = parser.parse_args(argv)
    generate(args.out.resolve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
