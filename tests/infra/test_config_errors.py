"""Every configuration error is one family (infra.config.ConfigError) and stops a service
with exit status 78 (EX_CONFIG) and a message naming the file and the line, whatever the
file: a zone, a GSLB policy, the gateway's config, the topology."""

from __future__ import annotations

import subprocess
import sys

import pytest

from dns.gslb import GslbError
from dns.zone import ZoneError
from gateway.config import ConfigError as GatewayConfigError
from infra import ROOT
from infra.config import ConfigError
from infra.service import EXIT_CONFIG
from infra.topology import TopologyError
from tests.conftest import stack_env

BAD_ZONE = """$ORIGIN bad.example.
$TTL 60
@    IN SOA ns1.bad.example. h.bad.example. ( 1 2 3 4 5 )
@    IN NS  ns1.bad.example.
ns1  IN A   300.1.1.1
"""
BAD_POLICY = """ipdb: {ipdb}
services:
  - name: a.bad.example.
    kind: edges
    edges: []
  - name: b.bad.example.
    kind: teleport
"""


def test_one_family():
    for error in (ZoneError, GslbError, GatewayConfigError, TopologyError):
        assert issubclass(error, ConfigError), error


def _dns_auth(tmp_path, **env: str) -> subprocess.CompletedProcess[str]:
    run = stack_env(tmp_path / "run")
    run.update(PYTHONPATH=str(ROOT), D11_ADDRESS="127.20.8.21", D11_PORT="53",
               OTEL_TRACES_EXPORTER="none", **env)  # fmt: skip
    return subprocess.run([sys.executable, "-m", "dns.auth"], cwd=ROOT, env=run,
                          capture_output=True, text=True, timeout=30)  # fmt: skip


@pytest.mark.parametrize("kind", ["zone", "policy"])
def test_a_bad_file_exits_78_naming_file_and_line(tmp_path, kind):
    zone = tmp_path / "bad.zone"
    policy = tmp_path / "bad.yaml"
    if kind == "zone":
        zone.write_text(BAD_ZONE)
        result, where = _dns_auth(tmp_path, D11_ZONES=str(zone)), f"{zone}:5:"
    else:
        zone.write_text(BAD_ZONE.replace("300", "127"))
        policy.write_text(BAD_POLICY.format(ipdb=ROOT / "dns" / "gslb" / "ipdb.csv"))
        result = _dns_auth(tmp_path, D11_ZONES=str(zone), D11_GSLB_POLICY=str(policy))
        where = f"{policy}:6:"
    assert result.returncode == EXIT_CONFIG, result.stderr
    assert where in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
