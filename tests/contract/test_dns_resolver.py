"""The ISPs' recursive resolvers, asked with dig like any stub would; and BIND 9 as an
independent resolver whose root hints point at our root, resolving through our servers."""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from infra import ROOT
from tests.conftest import Stack, d11
from tests.contract.test_dns_auth import dig, flags, section, spray, status


@pytest.fixture(scope="module")
def resolver(stack: Stack) -> str:
    return stack.topology.host("resolver-telecom").address


def test_the_whole_chain_across_zones(resolver):
    out = dig(f"@{resolver}", "img.shop.example", "A")
    assert status(out) == "NOERROR" and flags(out) == {"qr", "rd", "ra"}  # not authoritative
    answer = section(out, "ANSWER")
    assert [r[3] for r in answer] == ["CNAME", "CNAME", "A"]
    assert answer[0][4] == "img.shop.example.cdn.example."
    assert answer[1][4] == "img.shop.example.gslb.cdn.example." and answer[2][4] == "127.30.1.1"


def test_ttls_count_down_in_the_cache(resolver):
    first = section(dig(f"@{resolver}", "mail.shop.example", "AAAA"), "ANSWER")[0]
    time.sleep(2.1)
    later = section(dig(f"@{resolver}", "mail.shop.example", "AAAA"), "ANSWER")[0]
    assert later[4] == first[4] == "fd11::60"
    assert int(later[1]) <= int(first[1]) - 2


def test_negative_answers_are_cached_with_the_soa_ttl(resolver):
    first = dig(f"@{resolver}", "missing.shop.example", "A")
    assert status(first) == "NXDOMAIN"
    ttl_first = int(section(first, "AUTHORITY")[0][1])
    assert ttl_first <= 60
    time.sleep(2.1)
    again = dig(f"@{resolver}", "missing.shop.example", "A")
    assert status(again) == "NXDOMAIN"
    assert int(section(again, "AUTHORITY")[0][1]) <= ttl_first - 2  # from the cache
    nodata = dig(f"@{resolver}", "mail.shop.example", "MX")
    assert status(nodata) == "NOERROR" and section(nodata, "ANSWER") == []


def test_servfail_when_the_zone_s_server_is_gone(resolver):
    started = time.monotonic()
    out = dig("+tries=1", "+time=5", f"@{resolver}", "www.broken.example", "A")
    assert status(out) == "SERVFAIL"
    assert time.monotonic() - started < 4.5


def test_iterative_queries_are_refused_and_client_subnet_is_echoed(resolver):
    assert status(dig("+norec", f"@{resolver}", "api.shop.example")) == "REFUSED"
    ecs = dig("+subnet=100.64.7.0/24", f"@{resolver}", "api.shop.example")
    assert status(ecs) == "NOERROR" and "CLIENT-SUBNET: 100.64.7.0/24/0" in ecs


def test_truncation_to_a_stub_without_edns_then_tcp(resolver):
    out = dig("+noedns", f"@{resolver}", "big.shop.example", "TXT")
    assert "Truncated, retrying in TCP mode" in out and len(section(out, "ANSWER")) == 5


class FakeRoot:
    """A 'root server' that records what it is asked and answers first with a forged
    reply (wrong id, an address of its choosing), then with REFUSED."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((address, 53))
        self.sock.settimeout(0.2)
        self.seen: list[tuple[int, int]] = []  # (source port, query id)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                data, addr = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            (qid,) = struct.unpack_from("!H", data)
            self.seen.append((addr[1], qid))
            question = data[12:]
            end = question.index(b"\0") + 5
            q = question[:end]
            forged = struct.pack("!HHHHHH", qid ^ 0x5555, 0x8400, 1, 1, 0, 0) + q
            forged += b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 3600, 4) + bytes([6, 6, 6, 6])
            self.sock.sendto(forged, addr)
            refused = struct.pack("!HHHHHH", qid, 0x8005, 1, 0, 0, 0) + q
            self.sock.sendto(refused, addr)

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.sock.close()


def test_random_ids_and_ports_retries_and_forged_replies_ignored(tmp_path):
    root = FakeRoot("127.20.9.5")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("D11_", "OTEL_"))}
    env.update(D11_ADDRESS="127.20.9.6", D11_PORT="53", D11_ROOT_HINTS="127.20.9.5",
               D11_RUN_DIR=str(tmp_path), OTEL_SDK_DISABLED="true")  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "dns.resolver"], cwd=ROOT, env=env)
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            out = dig("+time=1", "+tries=1", "@127.20.9.6", "a.example", "A")
            if "status:" in out:
                break
            time.sleep(0.2)
        outs = [dig("+time=5", "+tries=1", "@127.20.9.6", f"n{i}.example", "A") for i in range(4)]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
        root.close()
    for out in outs:
        assert status(out) == "SERVFAIL" and "6.6.6.6" not in out
    ports = {p for p, _ in root.seen}
    ids = {i for _, i in root.seen}
    assert len(root.seen) >= 8  # every question asked more than once before giving up
    assert len(ports) >= len(root.seen) - 1 and len(ids) >= len(root.seen) - 1


def test_bind_resolves_through_our_root_tld_and_auth(stack: Stack):
    """A real BIND 9 resolver, root hints = our root, asked with dig."""
    root = stack.topology.host("dns-root").address
    tmp = Path(tempfile.mkdtemp(prefix="d11-bind-"))
    tmp.chmod(0o777)
    (tmp / "root.hints").write_text(
        f".  3600000 IN NS a.root-servers.example.\na.root-servers.example. 3600000 IN A {root}\n"
    )
    (tmp / "named.conf").write_text(
        f'options {{ directory "{tmp}"; listen-on port 53055 {{ 127.0.0.1; }};'
        " listen-on-v6 { none; }; recursion yes; allow-recursion { 127.0.0.0/8; };"
        f' dnssec-validation no; qname-minimization off; pid-file "{tmp}/named.pid"; }};\n'
        f'zone "." {{ type hint; file "{tmp}/root.hints"; }};\n'
    )
    named = subprocess.Popen(["named", "-g", "-n", "1", "-c", str(tmp / "named.conf")],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        out = ""
        while time.monotonic() < deadline:
            out = dig("-p", "53055", "+time=2", "+tries=1", "@127.0.0.1", "img.shop.example")
            if "status: NOERROR" in out and section(out, "ANSWER"):
                break
            time.sleep(0.3)
        answer = section(out, "ANSWER")
        assert [r[3] for r in answer] == ["CNAME", "CNAME", "A"], out
        assert answer[2][4] == "127.30.1.1"
        api = dig("-p", "53055", "@127.0.0.1", "www.shop.example")
        east = {"127.10.0.10", "127.10.0.11", "127.10.0.14", "127.10.0.15"}  # both gateways
        north = {"127.11.0.10", "127.11.0.14"}  # the other site's backup
        # BIND shuffles an RRset's order (rrset-order), so by set: two east, one north.
        found = [r[4] for r in section(api, "ANSWER") if r[3] == "A"]
        assert len(set(found) & east) == 2 and len(set(found) & north) == 1, found
        assert "api.telecom.gslb.shop.example." in [r[4] for r in section(api, "ANSWER")]
        nx = dig("-p", "53055", "@127.0.0.1", "nope.shop.example")
        assert status(nx) == "NXDOMAIN"
    finally:
        named.send_signal(signal.SIGTERM)
        named.wait(10)


def test_d11_dig_shows_the_path_and_asks_resolvers(stack: Stack):
    wide = {**stack.env, "COLUMNS": "250"}  # rich wraps tables to the terminal's width
    path = d11("dig", "img.shop.example", env=wide).stdout
    # Root, TLD, the shop; then again from the root into the CDN's zone.
    for hop in ("127.20.0.1", "ns1.nic.example.", "ns1.shop.example.", "CNAME leaves the zone",
                "ns1.cdn.example.",
                "img.shop.example.gslb.cdn.example. 20 A 127.30.1.1"):  # fmt: skip
        assert hop in path, path
    via = stack.d11("dig", "www.shop.example", "--via", "resolver-unicom").stdout
    assert "NOERROR flags: qr rd ra" in via and "api.telecom.gslb.shop.example." in via
    assert "127.10.0.1" in stack.d11("dig", "api.shop.example", "--via", "httpdns").stdout


def test_random_and_mutated_packets_crash_no_resolver(stack: Stack):
    servers = [stack.topology.host(h).address for h in ("resolver-telecom", "resolver-unicom")]
    spray(servers, 2000, seed=2026)
    time.sleep(1)
    for server in servers:
        out = dig("+time=5", f"@{server}", "www.shop.example", "A")
        assert status(out) == "NOERROR", out
        east = ("127.10.0.10", "127.10.0.11", "127.10.0.14", "127.10.0.15")
        assert next(r[4] for r in section(out, "ANSWER") if r[3] == "A") in east, out


STALE_ROOT = """$ORIGIN .
$TTL 2
@            IN SOA a.root.stale. hostmaster.stale. ( 1 60 60 600 2 )
@            IN NS  a.root.stale.
a.root.stale. IN A  127.20.8.1
www.stale.   2 IN A 127.9.9.9
"""


def test_stale_answers_are_served_when_the_authority_is_unreachable(tmp_path):
    """RFC 8767: a private root serving one name with a 2 s TTL, and a resolver whose root
    hints point at it. Once the root is gone and the TTL has run out, the resolver answers
    with the expired record and a 30 s TTL instead of SERVFAIL; a name it never saw is
    still SERVFAIL."""
    zone = tmp_path / "stale-root.zone"
    zone.write_text(STALE_ROOT)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("D11_", "OTEL_"))}
    env.update(PYTHONPATH=str(ROOT), OTEL_TRACES_EXPORTER="none", D11_PORT="53",
               D11_RUN_DIR=str(tmp_path / "run"))  # fmt: skip

    def start(module: str, **extra: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-m", module], cwd=ROOT, env={**env, **extra},
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip

    root = start("dns.auth", D11_ADDRESS="127.20.8.1", D11_ZONES=str(zone), D11_SERVICE="r")
    resolver = start("dns.resolver", D11_ADDRESS="127.20.8.2", D11_ROOT_HINTS="127.20.8.1",
                     D11_SERVICE="res")  # fmt: skip
    try:
        deadline = time.monotonic() + 15
        while True:
            out = dig("+tries=1", "+time=1", "@127.20.8.2", "www.stale", "A")
            if "status: NOERROR" in out or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert section(out, "ANSWER") == [["www.stale.", "2", "IN", "A", "127.9.9.9"]]
        root.kill()
        root.wait(5)
        time.sleep(2.5)  # past the TTL
        stale = dig("+tries=1", "+time=5", "@127.20.8.2", "www.stale", "A")
        assert status(stale) == "NOERROR", stale
        assert section(stale, "ANSWER") == [["www.stale.", "30", "IN", "A", "127.9.9.9"]]
        never = dig("+tries=1", "+time=5", "@127.20.8.2", "other.stale", "A")
        assert status(never) == "SERVFAIL"
    finally:
        for p in (root, resolver):
            p.kill()
            p.wait(5)
