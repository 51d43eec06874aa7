"""Double-11 infrastructure: topology, launcher, CLI, telemetry and the shared service skeleton."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


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
