"""Double-11 infrastructure: topology, launcher, CLI, telemetry and the shared service skeleton."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
