"""Double-11 infrastructure: topology, launcher, CLI, telemetry and the shared service skeleton."""

from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def load_yaml(text: str) -> object:
    """``yaml.safe_load`` through libyaml's parser where PyYAML has it: ten times faster,
    and every service start parses the topology (36 ms in pure Python, 4 ms here)."""
    import yaml

    return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def write_atomic(path: Path, data: bytes | str, mode: int | None = None) -> None:
    """Write `path` through a hidden sibling and a rename, so a reader (or a kill
    mid-write) never meets half a file; `mode` is set before the file is visible."""
    tmp = path.with_name(f".{path.name}.tmp")
    if isinstance(data, str):
        tmp.write_text(data)
    else:
        tmp.write_bytes(data)
    if mode is not None:
        tmp.chmod(mode)
    tmp.replace(path)


def sync_rendered(files: dict[Path, str], *, check: bool, command: str) -> int:
    """Write the files a renderer gives (``./d11 compose``, ``./d11 k8s``) where they
    differ; with ``check``, write nothing and fail (1) when any is stale."""
    import sys

    stale = []
    for path, text in files.items():
        if (path.read_text() if path.exists() else None) == text:
            continue
        stale.append(path.relative_to(ROOT))
        if not check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    if check and stale:
        print(f"stale (run {command}): " + ", ".join(map(str, stale)), file=sys.stderr)
        return 1
    for path in stale:
        print(f"wrote {path}")
    return 0


def render_command(
    name: str, doc: str, render: Callable[[], dict[Path, str]], argv: list[str] | None
) -> int:
    """``./d11 NAME [--check]`` for a renderer (compose, k8s): write its files, or check."""
    import argparse

    p = argparse.ArgumentParser(prog=f"d11 {name}", description=doc.split("\n")[0])
    p.add_argument("--check", action="store_true", help="fail if a rendered file is stale")
    args = p.parse_args(argv)
    return sync_rendered(render(), check=args.check, command=f"./d11 {name}")
