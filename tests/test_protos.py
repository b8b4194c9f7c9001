"""The committed stubs are what `make protos` generates from the .proto files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_generated_stubs_are_current(tmp_path: Path) -> None:
    protos = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "protos").glob("*.proto"))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            "-I.",
            f"--python_out={tmp_path}",
            f"--pyi_out={tmp_path}",
            f"--grpc_python_out={tmp_path}",
            *protos,
        ],
        cwd=ROOT,
        check=True,
    )
    generated = sorted((tmp_path / "protos").glob("*_pb2*.py*"))
    assert generated, "protoc generated nothing"
    stale = [p.name for p in generated if p.read_bytes() != (ROOT / "protos" / p.name).read_bytes()]
    assert not stale, f"stale generated stubs (run `make protos`): {stale}"
