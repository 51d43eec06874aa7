"""Checks on the tree itself: lint clean, generated code in step with its sources, and a
README in every top-level folder."""

from __future__ import annotations

import filecmp
import subprocess
import sys

from infra import ROOT
from rpc import codegen


def test_ruff_is_clean():
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", str(ROOT)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_generated_grpc_modules_match_their_protos(tmp_path):
    codegen.generate(tmp_path)
    generated = sorted((tmp_path / "rpc" / "proto").glob("*_pb2*"))
    assert generated
    for file in generated:
        committed = ROOT / "rpc" / "proto" / file.name
        assert committed.exists() and filecmp.cmp(file, committed, shallow=False), (
            f"{committed.name} is stale: run python -m rpc.codegen"
        )


def test_every_top_level_folder_has_a_readme():
    folders = [p for p in ROOT.iterdir() if p.is_dir() and not p.name.startswith(".")]
    missing = [p.name for p in folders if not (p / "README.md").exists()]
    assert not missing, f"folders without README.md: {missing}"
