"""A service for tests/infra/test_zygote.py: reports what a forked child starts with."""

import importlib
import json
import os
import sys
from pathlib import Path

# Read at import, as a module-level setting would be: must be the child's value.
SETTING = os.environ.get("D11_PROBE_SETTING", "")

if __name__ == "__main__":
    for name in filter(None, os.environ.get("D11_PROBE_IMPORTS", "").split(",")):
        importlib.import_module(name)
    report = {
        "setting": SETTING,
        "env_keys": sorted(k for k in os.environ if k.startswith("D11_PROBE")),
        "cmdline": Path("/proc/self/cmdline").read_bytes().decode().strip("\0 "),
        "fds": sorted(int(fd) for fd in os.listdir("/proc/self/fd")),
        "sid_is_self": os.getsid(0) == os.getpid(),
        "cwd": os.getcwd(),
        "argv0": sys.argv[0],
    }
    print("probe says hello")
    Path(os.environ["D11_PROBE_OUT"]).write_text(json.dumps(report))
    raise SystemExit(int(os.environ.get("D11_PROBE_EXIT", "0")))
