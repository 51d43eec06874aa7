"""Several emulated hosts in one process: ``python -m infra.group``.

A Python process costs about 30 MB before it does anything, so hosts that are many and
light (the DNS servers, the CDN's nodes) share one, as the topology's ``process:`` field
says. Each keeps what makes it a host: its own address and listeners, settings, metrics
and tracer (its spans carry its own service name); they share the event loop, the log
file and their fate (one signal stops them all).

``D11_GROUP`` is JSON: ``{"name": …, "hosts": [{"module": …, "env": {…}}, …]}``, where
``env`` is what the launcher would have given the host as a process of its own.
"""

from __future__ import annotations

import importlib
import json
import os
import sys

from infra.config import ConfigError, Settings
from infra.service import EXIT_CONFIG, run_hosts


def main() -> None:
    try:
        group = json.loads(os.environ["D11_GROUP"])
        members = []
        for host in group["hosts"]:
            env = {**os.environ, **host["env"]}
            env.pop("D11_GROUP", None)
            module = importlib.import_module(host["module"])
            settings = Settings.from_env(
                env, name=env["D11_SERVICE"], role=env["D11_ROLE"], port=int(env["D11_PORT"])
            )
            members.append((module.build, settings))
    except (KeyError, ValueError, AttributeError, ImportError, ConfigError) as exc:
        print(f"infra.group: cannot start the group: {exc!r}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None
    run_hosts(members, group["name"])


if __name__ == "__main__":
    main()
