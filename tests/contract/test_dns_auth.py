"""The authoritative servers (root, TLD, the shop's zone) as BIND's tools see them: zone
files through named-checkzone, answers through dig, flags, sections and TTLs checked."""

from __future__ import annotations

import contextlib
import os
import random
import re
import socket
import struct
import subprocess
from pathlib import Path

import pytest

from dns.zone import ZONES_DIR
from tests.conftest import Stack

ZONES = {".": "root.zone", "example": "example.zone", "shop.example": "shop.example.zone",
         "cdn.example": "cdn.example.zone",
         "127.in-addr.arpa": "127.in-addr.arpa.zone"}  # fmt: skip


def dig(*args: str) -> str:
    result = subprocess.run(["dig", *args], capture_output=True, text=True, timeout=20)
    return result.stdout + result.stderr


def status(out: str) -> str:
    return re.search(r"status: (\w+)", out).group(1)  # type: ignore[union-attr]


def flags(out: str) -> set[str]:
    return set(re.search(r";; flags: ([\w ]*);", out).group(1).split())  # type: ignore[union-attr]


def section(out: str, name: str) -> list[list[str]]:
    """The records of one section, each split into fields."""
    m = re.search(rf";; {name} SECTION:\n(.*?)(?:\n\n|\Z)", out, re.S)
    return [line.split(None, 4) for line in m.group(1).splitlines()] if m else []


@pytest.fixture(scope="module")
def ns(stack: Stack) -> dict[str, str]:
    return {h: stack.topology.host(h).address for h in ("dns-root", "dns-tld", "dns-auth")}


@pytest.mark.parametrize("origin", ZONES)
def test_zone_files_pass_named_checkzone(origin):
    result = subprocess.run(
        ["named-checkzone", "-k", "fail", "-n", "fail", origin, str(ZONES_DIR / ZONES[origin])],
        capture_output=True, text=True, timeout=20,
    )  # fmt: skip
    assert result.returncode == 0 and result.stdout.strip().endswith("OK"), result.stdout


def test_authoritative_answer_has_aa_and_no_ra(ns):
    out = dig("+norec", f"@{ns['dns-auth']}", "shop.example", "A")
    assert status(out) == "NOERROR" and flags(out) == {"qr", "aa"}
    assert section(out, "ANSWER") == [["shop.example.", "300", "IN", "A", "127.10.0.10"]]
    assert "udp: 1232" in out


def test_root_and_tld_refer_down_with_glue(ns):
    root = dig("+norec", f"@{ns['dns-root']}", "api.shop.example", "A")
    assert status(root) == "NOERROR" and "aa" not in flags(root)
    assert section(root, "ANSWER") == []
    # Two servers for the zone (RFC 2182), each with its glue.
    assert sorted(section(root, "AUTHORITY")) == [
        ["example.", "172800", "IN", "NS", "ns1.nic.example."],
        ["example.", "172800", "IN", "NS", "ns2.nic.example."],
    ]
    assert sorted(section(root, "ADDITIONAL")) == [
        ["ns1.nic.example.", "172800", "IN", "A", "127.20.0.2"],
        ["ns2.nic.example.", "172800", "IN", "A", "127.20.0.12"],
    ]
    tld = dig("+norec", f"@{ns['dns-tld']}", "api.shop.example", "A")
    assert "aa" not in flags(tld)
    assert sorted(r[3:] for r in section(tld, "AUTHORITY")) == [
        ["NS", "ns1.shop.example."],
        ["NS", "ns2.shop.example."],
    ]
    assert sorted(r[3:] for r in section(tld, "ADDITIONAL")) == [
        ["A", "127.20.0.13"],
        ["A", "127.20.0.3"],
    ]


def test_nxdomain_and_nodata_carry_the_soa_with_the_negative_ttl(ns):
    nx = dig("+norec", f"@{ns['dns-auth']}", "nothing.shop.example", "A")
    assert status(nx) == "NXDOMAIN" and "aa" in flags(nx)
    (soa,) = section(nx, "AUTHORITY")
    assert soa[0] == "shop.example." and soa[1] == "60" and soa[3] == "SOA"  # min(300, 60)
    nodata = dig("+norec", f"@{ns['dns-auth']}", "mail.shop.example", "MX")
    assert status(nodata) == "NOERROR" and section(nodata, "ANSWER") == []
    assert section(nodata, "AUTHORITY")[0][3] == "SOA"
    # An empty non-terminal exists: NODATA, not NXDOMAIN.
    ent = dig("+norec", f"@{ns['dns-auth']}", "_tcp.shop.example", "TXT")
    assert status(ent) == "NOERROR" and section(ent, "ANSWER") == []


def test_cname_chains_inside_the_zone_and_stops_where_it_leaves(ns):
    www = dig("+norec", f"@{ns['dns-auth']}", "www.shop.example", "A")
    # www → shop-front → api, which the GSLB takes on: → api.telecom.gslb → two entries,
    # then the other site's backup.
    assert [r[3] for r in section(www, "ANSWER")] == ["CNAME", "CNAME", "CNAME", "A", "A", "A"]
    east = {"127.10.0.10", "127.10.0.11", "127.10.0.14", "127.10.0.15"}  # both gateways'
    assert {r[4] for r in section(www, "ANSWER")[-3:-1]} <= east
    assert section(www, "ANSWER")[-1][4] in {"127.11.0.10", "127.11.0.14"}  # north's
    img = dig("+norec", f"@{ns['dns-auth']}", "img.shop.example", "A")
    assert section(img, "ANSWER") == [
        ["img.shop.example.", "300", "IN", "CNAME", "img.shop.example.cdn.example."]
    ]


def test_mx_brings_its_address_and_other_types_answer(ns):
    mx = dig("+norec", f"@{ns['dns-auth']}", "shop.example", "MX")
    assert section(mx, "ANSWER")[0][3:] == ["MX", "10 mail.shop.example."]
    assert ["mail.shop.example.", "300", "IN", "A", "127.10.0.60"] in section(mx, "ADDITIONAL")
    aaaa = dig("+norec", f"@{ns['dns-auth']}", "mail.shop.example", "AAAA")
    assert section(aaaa, "ANSWER")[0][3:] == ["AAAA", "fd11::60"]
    txt = dig("+norec", f"@{ns['dns-auth']}", "shop.example", "TXT")
    assert section(txt, "ANSWER")[0][4] == '"v=spf1 mx -all"'
    soa = dig("+norec", f"@{ns['dns-auth']}", "shop.example", "SOA")
    assert section(soa, "ANSWER")[0][3] == "SOA"


def test_names_outside_the_zones_are_refused(ns):
    out = dig("+norec", f"@{ns['dns-auth']}", "www.google.com", "A")
    assert status(out) == "REFUSED" and "aa" not in flags(out)
    chaos = dig("+norec", f"@{ns['dns-auth']}", "version.bind", "TXT", "CH")
    assert status(chaos) == "REFUSED"


def test_big_answers_truncate_over_udp_and_come_whole_over_tcp(ns):
    udp = dig("+norec", "+noedns", "+ignore", f"@{ns['dns-auth']}", "big.shop.example", "TXT")
    assert "tc" in flags(udp) and section(udp, "ANSWER") == []
    retried = dig("+norec", "+noedns", f"@{ns['dns-auth']}", "big.shop.example", "TXT")
    assert "Truncated, retrying in TCP mode" in retried
    assert len(section(retried, "ANSWER")) == 5 and "(TCP)" in retried
    # With EDNS (1232 bytes) the same answer fits in one datagram.
    edns = dig("+norec", f"@{ns['dns-auth']}", "big.shop.example", "TXT")
    assert "tc" not in flags(edns) and len(section(edns, "ANSWER")) == 5
    tcp = dig("+norec", "+tcp", "+keepopen", f"@{ns['dns-auth']}", "api.shop.example",
              "shop.example", "MX")  # fmt: skip
    assert tcp.count("status: NOERROR") == 2


def test_edns_version_and_client_subnet(ns):
    bad = dig("+norec", "+edns=1", "+noednsnegotiation", f"@{ns['dns-auth']}", "api.shop.example")
    assert status(bad) == "BADVERS"
    ecs = dig("+norec", "+subnet=100.64.1.0/24", f"@{ns['dns-auth']}", "shop.example")
    assert status(ecs) == "NOERROR"
    assert "CLIENT-SUBNET: 100.64.1.0/24/0" in ecs  # echoed, scope 0: not tailored
    balanced = dig("+norec", "+subnet=127.102.9.0/24", f"@{ns['dns-auth']}", "api.shop.example")
    assert "CLIENT-SUBNET: 127.102.9.0/24/16" in balanced  # the GSLB's: the database's /16


def _udp(address: str, payload: bytes, timeout: float = 2.0) -> bytes | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(payload, (address, 53))
        try:
            return s.recv(65535)
        except TimeoutError:
            return None


def _query(name: str, qtype: int = 1, qid: int = 0x1234, opcode: int = 0, extra: bytes = b"",
           arcount: int = 0) -> bytes:  # fmt: skip
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.strip(".").split(".")) + b"\0"
    header = struct.pack("!HHHHHH", qid, (opcode << 11) | 0x0100, 1, 0, 0, arcount)
    return header + labels + struct.pack("!HH", qtype, 1) + extra


def test_malformed_queries_formerr_notimp_and_no_answer_to_responses(ns):
    auth = ns["dns-auth"]
    reply = _udp(auth, _query("api.shop.example")[:20])  # question cut short
    assert reply is not None and reply[:2] == b"\x12\x34" and reply[3] & 0xF == 1  # FORMERR
    notimp = _udp(auth, _query("api.shop.example", opcode=2))  # STATUS
    assert notimp is not None and notimp[3] & 0xF == 4
    two = _query("api.shop.example")[:4] + b"\x00\x02" + _query("api.shop.example")[6:] * 1
    assert _udp(auth, two)[3] & 0xF == 1  # type: ignore[index]
    # A malformed Client Subnet option (family 3) is FORMERR.
    ecs = struct.pack("!HHH", 8, 8, 3) + b"\x18\x00\x01\x02\x03"
    opt = b"\x00" + struct.pack("!HHIH", 41, 1232, 0, len(ecs)) + ecs
    assert _udp(auth, _query("api.shop.example", extra=opt, arcount=1))[3] & 0xF == 1  # type: ignore[index]
    response = bytearray(_query("api.shop.example"))
    response[2] |= 0x80
    assert _udp(auth, bytes(response), timeout=0.5) is None
    assert _udp(auth, b"\x01\x02\x03", timeout=0.5) is None


def spray(servers: list[str], count: int, seed: int) -> None:
    """Send ``count`` datagrams to each server: half random bytes, half a good query with
    a few bytes changed (some of those cut short)."""
    rng = random.Random(seed)
    good = _query("www.shop.example", qtype=1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setblocking(False)
        for n in range(count):
            if n % 2:
                packet = bytearray(good)
                for _ in range(rng.randint(1, 6)):
                    packet[rng.randrange(len(packet))] = rng.randrange(256)
                data = bytes(packet[: rng.randint(0, len(packet))] if n % 7 == 0 else packet)
            else:
                data = os.urandom(rng.randint(0, 600))
            for server in servers:
                with contextlib.suppress(BlockingIOError):
                    s.sendto(data, (server, 53))


def test_random_and_mutated_packets_crash_nothing(ns):
    spray(list(ns.values()), 4000, seed=1111)
    # Garbage over TCP too: a length prefix promising more than comes, then junk.
    with socket.create_connection((ns["dns-auth"], 53), timeout=2) as t:
        t.sendall(b"\xff\xff" + os.urandom(300))
    for server in ns.values():
        out = dig("+norec", f"@{server}", "api.shop.example", "A")
        assert status(out) == "NOERROR", out


def test_dig_trace_walks_root_tld_and_shop(ns, tmp_path):
    """dig +trace resolves the name servers' names through the stub resolver; a private
    hosts file (in a mount namespace of its own) stands in for the lab's resolver."""
    hosts = tmp_path / "hosts"
    hosts.write_text(
        f"{ns['dns-root']} a.root-servers.example\n{ns['dns-tld']} ns1.nic.example\n"
        f"{ns['dns-auth']} ns1.shop.example ns1.cdn.example\n"
    )
    script = f"mount --bind {hosts} /etc/hosts && dig +trace @{ns['dns-root']} www.shop.example"
    out = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True,
                         timeout=30).stdout  # fmt: skip
    assert f"from {ns['dns-root']}#53(a.root-servers.example)" in out
    assert f"from {ns['dns-tld']}#53(ns1.nic.example)" in out
    assert f"from {ns['dns-auth']}#53(ns1.shop.example)" in out
    # Telecom east's pool (dns/gslb/api.yaml): .10/.11 on gateway, .14/.15 on gateway-2.
    east = r"127\.10\.0\.1[0145]"
    assert re.search(rf"api\.telecom\.gslb\.shop\.example\.\s+20\s+IN\s+A\s+{east}\s", out)


def test_case_of_the_question_is_kept(ns):
    out = dig("+norec", f"@{ns['dns-auth']}", "MaIl.sHoP.ExAmPlE", "A")
    assert ";MaIl.sHoP.ExAmPlE.\t\tIN\tA" in out
    assert status(out) == "NOERROR" and section(out, "ANSWER")[0][4] == "127.10.0.60"
    balanced = dig("+norec", f"@{ns['dns-auth']}", "ApI.sHoP.ExAmPlE", "A")
    assert section(balanced, "ANSWER")[0][0] == "ApI.sHoP.ExAmPlE."


def test_zone_dir_is_where_the_servers_read(stack: Stack):
    env = stack.topology.environment(stack.topology.host("dns-auth"))
    for name in env["D11_ZONES"].split(","):
        assert (Path(ZONES_DIR) / name).exists()
