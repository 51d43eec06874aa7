"""Docker mode on a machine that may have no registry: ``./d11 docker up|down|build|compose``.

Where the registry is reachable this is ``docker compose up`` with a wait for health.
Where it is not (this lab's CI machines), it does what the README's quickstart cannot:

1. starts ``dockerd`` when the engine is installed but not running (as root);
2. makes a Debian base image with debootstrap (``docker/base-image.sh``) when
   ``python:3.11-slim`` cannot be pulled, and builds on it (``D11_BASE_IMAGE``);
3. fills ``docker/wheels`` from the host's pip (inside containers PyPI's TLS fails on
   such machines), so the image installs the pinned packages offline.

The project name is ``double11`` (``COMPOSE_PROJECT_NAME``), so networks and containers
have names tests and tshark can find: ``double11_underlay``, ``double11_gateway_1``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from infra import ROOT
from infra.compose import BASE as OFFICIAL_BASE

PROJECT = "double11"

LOCAL_BASE = "d11-base:bookworm-slim"  # -slim: without docs, man pages and locales
WHEELS = ROOT / "docker" / "wheels"
RUNTIME_LOCK = ROOT / "docker" / "requirements.lock"  # rendered by ./d11 compose
DOCKERD_LOG = Path("/var/log/d11-dockerd.log")


class DockerError(RuntimeError):
    pass


def say(message: str, who: str = "docker") -> None:
    print(f"d11 {who}: {message}", file=sys.stderr, flush=True)


def quiet(*argv: str, timeout: float = 60) -> bool:
    try:
        return subprocess.run(argv, capture_output=True, timeout=timeout).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def ensure_engine() -> None:
    if not shutil.which("docker"):
        raise DockerError("the docker client is not installed (apt-get install docker.io)")
    if quiet("docker", "info"):
        return
    if not shutil.which("dockerd") or os.geteuid() != 0:
        raise DockerError("no Docker engine is running, and this user cannot start dockerd")
    say(f"starting dockerd (log: {DOCKERD_LOG})")
    with DOCKERD_LOG.open("ab") as log:
        subprocess.Popen(["dockerd"], stdout=log, stderr=log, start_new_session=True)
    deadline = time.monotonic() + 60
    while not quiet("docker", "info"):
        if time.monotonic() > deadline:
            raise DockerError(f"dockerd did not come up in 60 s; see {DOCKERD_LOG}")
        time.sleep(0.5)


def compose_command() -> list[str]:
    """Compose v2 (``docker compose``) where it exists, else v1 (``docker-compose``)."""
    if quiet("docker", "compose", "version"):
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    raise DockerError("Docker Compose is not installed (apt-get install docker-compose)")


def base_image() -> str:
    """The image to build on: the user's D11_BASE_IMAGE, the official one if it can be had,
    else one made here with debootstrap."""
    if chosen := os.environ.get("D11_BASE_IMAGE"):
        return chosen
    if quiet("docker", "image", "inspect", OFFICIAL_BASE) or quiet(
        "docker", "pull", "-q", OFFICIAL_BASE, timeout=120
    ):
        return OFFICIAL_BASE
    if not quiet("docker", "image", "inspect", LOCAL_BASE):
        say(f"no registry: making {LOCAL_BASE} with debootstrap")
        subprocess.run([str(ROOT / "docker" / "base-image.sh"), LOCAL_BASE], check=True)
    return LOCAL_BASE


def ensure_wheels(base: str) -> None:
    """Wheels for an offline image build, on a base that is not the official one; fetched
    again when the image's lock changes (a stamp holds the lock's hash)."""
    lock = RUNTIME_LOCK.read_bytes()
    stamp = WHEELS / ".lock.sha256"
    digest = hashlib.sha256(lock).hexdigest()
    if base == OFFICIAL_BASE or (stamp.exists() and stamp.read_text() == digest):
        return
    say("fetching the pinned wheels for an offline build (docker/wheels)")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check",
         "--find-links", str(WHEELS), "-r", str(RUNTIME_LOCK), "-w", str(WHEELS)],
        check=True,
    )  # fmt: skip
    stamp.write_text(digest)


def environment(base: str) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("COMPOSE_PROJECT_NAME", PROJECT)
    env["D11_BASE_IMAGE"] = base
    return env


def compose(*args: str, env: dict[str, str], check: bool = True) -> int:
    command = [*compose_command(), "-f", str(ROOT / "compose.yaml"), *args]
    code = subprocess.run(command, cwd=ROOT, env=env).returncode
    if check and code != 0:
        raise DockerError(f"{' '.join(command[:3])} {' '.join(args)} failed ({code})")
    return code


def build() -> dict[str, str]:
    ensure_engine()
    base = base_image()
    ensure_wheels(base)
    env = environment(base)
    say(f"building double-11:latest on {base}")
    # One service builds the image every service runs (they share `image:`).
    compose("build", "collector", env=env)
    return env


def containers(env: dict[str, str]) -> dict[str, dict]:
    """Our project's containers by service, as ``docker inspect`` reports them."""
    ids = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project="
         f"{env['COMPOSE_PROJECT_NAME']}"],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    if not ids:
        return {}
    inspected = json.loads(
        subprocess.run(["docker", "inspect", *ids], capture_output=True, text=True).stdout
    )
    return {c["Config"]["Labels"]["com.docker.compose.service"]: c for c in inspected}


def wait_healthy(env: dict[str, str], timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while True:
        pending = {}
        for name, c in containers(env).items():
            state = c["State"]
            health = state.get("Health", {}).get("Status")
            if not state["Running"]:
                raise DockerError(f"{name} exited ({state['ExitCode']}): "
                                  f"{' '.join(compose_command())} logs {name}")  # fmt: skip
            if health not in (None, "healthy"):
                pending[name] = health
        if not pending:
            return
        if time.monotonic() > deadline:
            raise DockerError(f"not healthy after {timeout:.0f} s: {pending}")
        time.sleep(1)


def up() -> None:
    env = build()
    started = time.monotonic()
    compose("up", "-d", env=env)
    wait_healthy(env)
    say(f"every container healthy in {time.monotonic() - started:.0f} s; "
        "https://localhost:8443 (entry), http://localhost:16686 (traces)")  # fmt: skip


def down() -> None:
    ensure_engine()
    compose("down", "-v", "-t", "5", env=environment(base_image_hint()))


def base_image_hint() -> str:
    return os.environ.get("D11_BASE_IMAGE") or LOCAL_BASE


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="d11 docker", description=__doc__.split("\n")[0])
    p.add_argument("action", choices=["build", "up", "down", "compose"])
    p.add_argument("args", nargs=argparse.REMAINDER, help="for compose: its arguments")
    a = p.parse_args(argv)
    try:
        if a.action == "build":
            build()
        elif a.action == "up":
            up()
        elif a.action == "down":
            down()
        else:
            ensure_engine()
            args = a.args[1:] if a.args[:1] == ["--"] else a.args  # `compose -- exec …`
            return compose(*args, env=environment(base_image_hint()), check=False)
    except (DockerError, subprocess.CalledProcessError) as exc:
        say(str(exc))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
