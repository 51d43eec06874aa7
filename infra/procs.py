"""Process bookkeeping for the launcher: pid files that survive a launcher crash, identity
checks so a recycled pid is never signalled, and memory use per process group."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from infra import write_atomic


@dataclass(frozen=True)
class PidRecord:
    name: str
    pid: int
    start_time: int  # /proc/PID/stat field 22: tells this process from a later one with its pid

    def alive(self) -> bool:
        return proc_start_time(self.pid) == self.start_time


def proc_start_time(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] == "Z":  # a zombie has exited already
        return None
    return int(fields[19])


def group_members(pgid: int) -> list[int]:
    members = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def group_memory(pgid: int) -> tuple[int, int]:
    """Resident memory of every process in the group (a service with workers is one row),
    as (RSS, PSS) bytes. RSS counts a page shared by several processes (the interpreter,
    libraries, a forked worker's inherited heap) in each of them; PSS divides it among
    them, so PSS summed over the stack is what the stack really holds in memory."""
    rss = pss = 0
    for pid in group_members(pgid):
        try:
            text = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith("Rss:"):
                rss += int(line.split()[1]) * 1024
            elif line.startswith("Pss:"):
                pss += int(line.split()[1]) * 1024
    return rss, pss


class PidDir:
    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, record: PidRecord) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path / f"{record.name}.json", json.dumps(asdict(record)))

    def read_all(self) -> dict[str, PidRecord]:
        records = {}
        if not self.path.is_dir():
            return records
        for file in sorted(self.path.glob("*.json")):
            try:
                record = PidRecord(**json.loads(file.read_text()))
            except (OSError, ValueError, TypeError):
                file.unlink(missing_ok=True)
                continue
            records[record.name] = record
        return records

    def remove(self, name: str) -> None:
        (self.path / f"{name}.json").unlink(missing_ok=True)


def terminate_group(record: PidRecord, timeout: float = 5.0) -> None:
    """SIGTERM the service's process group, then SIGKILL whatever outlives ``timeout``."""
    if not record.alive():
        return
    try:
        os.killpg(record.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not group_members(record.pid):
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(record.pid, signal.SIGKILL)


def die_with_parent() -> None:
    """preexec hook: the child gets SIGTERM when the launcher dies (Linux prctl), so a
    foreground ``./d11 up`` killed with -9 leaves nothing behind."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
