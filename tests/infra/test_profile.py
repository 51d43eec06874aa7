"""``./d11 profile HOST``: a flame graph (SVG, by py-spy) of a live host under traffic."""

from __future__ import annotations

import threading
import time
import urllib.request
import xml.etree.ElementTree as ET

from tests.conftest import d11, one_host_env
from tests.infra.test_launcher import PROBE_CONTROLLER

PROFILED = {**PROBE_CONTROLLER, "name": "profiled-controller", "address": "127.10.8.27"}


def test_profile_draws_a_flame_graph_of_a_live_host(tmp_path):
    env = one_host_env(tmp_path, PROFILED)
    try:
        d11("up", "--detach", env=env, timeout=60)
        stop = threading.Event()

        def traffic() -> None:  # something for the samples to land on
            while not stop.is_set():
                try:
                    urllib.request.urlopen("http://127.10.8.27:8080/openapi.json", timeout=2).read()
                except OSError:
                    time.sleep(0.05)

        worker = threading.Thread(target=traffic, daemon=True)
        worker.start()
        out = tmp_path / "graph.svg"
        try:
            run = d11("profile", "profiled-controller", "--seconds", "2", "--output", str(out),
                      "--rate", "200", env=env, timeout=90)  # fmt: skip
        finally:
            stop.set()
            worker.join(5)
        assert str(out) in run.stdout
        svg = out.read_text()
        root = ET.fromstring(svg)
        assert root.tag.endswith("svg")
        # The frames are the service's own: its web framework and this project's code.
        assert "aiohttp" in svg and "services/controller.py" in svg
        assert "hottest frames" in run.stdout
    finally:
        d11("down", env=env, check=False)


def test_profile_of_an_unknown_or_stopped_host_says_so(tmp_path):
    env = one_host_env(tmp_path, PROFILED)
    unknown = d11("profile", "no-such-host", "--seconds", "1", env=env, check=False)
    assert unknown.returncode != 0 and "no host or process 'no-such-host'" in unknown.stderr
    assert "Traceback" not in unknown.stderr and "profiled-controller" in unknown.stderr
    stopped = d11("profile", "profiled-controller", "--seconds", "1", env=env, check=False)
    assert stopped.returncode != 0 and "not running" in stopped.stderr
