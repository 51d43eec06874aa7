"""Service settings, read the same way by processes, containers and tests.

Every service is configured by environment variables (``D11_*`` for ours, ``OTEL_*`` for
telemetry) and, where a format people already know exists, by files. The launcher and
``compose.yaml`` set the variables; nothing is read from anywhere else.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from infra import ROOT

PREFIX = "D11_"
# The lab's admin token (X-Admin-Token) where D11_ADMIN_TOKEN does not set another: the
# controller's admin API, the CDN's uploads and operations, and the tools that call them.
LAB_ADMIN_TOKEN = "double-11-lab-admin"


class ConfigError(ValueError):
    """The base of every configuration error: a setting missing or malformed (the message
    names the variable), a gateway config, a zone file, a GSLB policy, the topology (the
    message names the file and line). A service exits 78 (EX_CONFIG) on one."""


def _lookup(env: Mapping[str, str], key: str) -> str | None:
    return env.get(PREFIX + key)


@dataclass(frozen=True)
class Settings:
    """What every service knows about itself: who it is and where it listens."""

    name: str
    role: str
    address: str
    port: int
    metrics_port: int | None = None
    run_dir: Path = ROOT / ".run"
    log_level: str = "INFO"
    env: Mapping[str, str] = field(default_factory=dict, repr=False)

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str] | None = None,
        *,
        name: str,
        role: str,
        port: int,
        address: str = "127.0.0.1",
    ) -> Settings:
        """Read settings; the keyword arguments are the defaults for running a module alone."""
        env = os.environ if env is None else env
        s = cls(
            name=_lookup(env, "SERVICE") or name,
            role=_lookup(env, "ROLE") or role,
            address=_lookup(env, "ADDRESS") or address,
            port=_int(env, "PORT", port),
            metrics_port=_int(env, "METRICS_PORT", None),
            run_dir=Path(_lookup(env, "RUN_DIR") or ROOT / ".run"),
            log_level=(_lookup(env, "LOG_LEVEL") or "INFO").upper(),
            env=dict(env),
        )
        return s

    @property
    def data_dir(self) -> Path:
        """Per-service state (databases, caches); created on first use."""
        path = Path(_lookup(self.env, "DATA_DIR") or self.run_dir / "data" / self.name)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def get(self, key: str, default: str | None = None) -> str:
        value = _lookup(self.env, key)
        if value is None:
            if default is None:
                raise ConfigError(f"{PREFIX}{key} is not set")
            return default
        return value

    def get_int(self, key: str, default: int | None = None) -> int:
        value = _int(self.env, key, default)
        if value is None:
            raise ConfigError(f"{PREFIX}{key} is not set")
        return value

    def get_float(self, key: str, default: float) -> float:
        raw = _lookup(self.env, key)
        try:
            return default if raw is None else float(raw)
        except ValueError:
            raise ConfigError(f"{PREFIX}{key}={raw!r} is not a number") from None

    def get_list(self, key: str, default: list[str] | None = None) -> list[str]:
        raw = _lookup(self.env, key)
        if raw is None:
            if default is None:
                raise ConfigError(f"{PREFIX}{key} is not set")
            return default
        return [part.strip() for part in raw.split(",") if part.strip()]


def _int(env: Mapping[str, str], key: str, default: int | None) -> int | None:
    raw = _lookup(env, key)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{PREFIX}{key}={raw!r} is not an integer") from None
