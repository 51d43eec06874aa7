"""HTTPDNS through plain HTTP clients, curl's own DoH client, and DNS messages built with
dnslib: the DNSPod and Alibaba APIs (with Alibaba's published signature example), DoH
(RFC 8484) over HTTP and HTTPS, and the JSON API."""

from __future__ import annotations

import base64
import hashlib
import subprocess
import time

import httpx
import pytest
from dnslib import QTYPE, RCODE, DNSRecord

from tests.conftest import Stack

# api.shop.example for telecom's east region (and for addresses the IP database does not
# know, which get the policy's default): dns/gslb/api.yaml.
# The east entries of the api GSLB, on both gateways; an answer holds two of them, then one
# of the north site's telecom entries as the backup.
EAST = {"127.10.0.10", "127.10.0.11", "127.10.0.14", "127.10.0.15"}
NORTH = {"127.11.0.10", "127.11.0.14"}


def _two_of_east(ips) -> bool:
    return len(set(ips[:2])) == 2 and set(ips[:2]) <= EAST and len(ips) == 3 and ips[2] in NORTH


@pytest.fixture(scope="module")
def base(stack: Stack) -> str:
    return stack.url("httpdns")


def test_dnspod_single_batch_ttl_and_clientip(base, http):
    r = http.get(f"{base}/d", params={"dn": "img.shop.example"})
    assert r.status_code == 200 and r.text == "127.30.1.1"
    r = http.get(f"{base}/d", params={"dn": "api.shop.example", "ttl": "1", "clientip": "1",
                                      "ip": "127.100.1.9"})  # fmt: skip
    ips, rest = r.text.split(",")
    ttl, client = rest.split("|")
    # telecom, east: the GSLB's two entries for that region.
    assert _two_of_east(ips.split(";")) and 0 < int(ttl) <= 20 and client == "127.100.1.9"
    batch = http.get(f"{base}/d", params={"dn": "api.shop.example,nothing.shop.example"})
    api, nothing = batch.text.splitlines()
    assert api.startswith("api.shop.example.:") and _two_of_east(api.split(":")[1].split(";"))
    assert nothing == "nothing.shop.example.:0"
    assert http.get(f"{base}/d", params={"dn": "bad..name"}).text == ""
    assert http.get(f"{base}/d", params={"dn": "api.shop.example", "ip": "nope"}).text == ""


def test_alibaba_d_and_batch(base, http):
    r = http.get(f"{base}/100000/d", params={"host": "www.shop.example", "ip": "127.100.2.7"})
    body = r.json()
    assert r.status_code == 200 and body["host"] == "www.shop.example"
    assert _two_of_east(body["ips"]) and body["client_ip"] == "127.100.2.7"
    assert 0 < body["ttl"] <= body["origin_ttl"] == 20  # the GSLB's short TTL
    batch = http.get(f"{base}/100000/resolve", params={"host": "api.shop.example,img.shop.example"})
    hosts = {d["host"]: d["ips"] for d in batch.json()["dns"]}
    assert _two_of_east(hosts["api.shop.example"]) and hosts["img.shop.example"] == ["127.30.1.1"]


def test_alibaba_errors(base, http):
    assert http.get(f"{base}/100000/d").json() == {"code": "MissingArgument"}
    r = http.get(f"{base}/100000/d", params={"host": "-bad-.example"})
    assert (r.status_code, r.json()["code"]) == (400, "InvalidHost")
    assert http.get(f"{base}/999999/d", params={"host": "a.example"}).json()["code"] == (
        "InvalidAccount"
    )


def test_signed_requests_with_the_published_example(base, http):
    # Alibaba's worked example: md5("www.aliyun.com-IAmASecret-1534316400") = 60c71e98…;
    # the signature is right, and the time it names is long past.
    vector = {"host": "www.aliyun.com", "t": "1534316400", "s": "60c71e98b6d7fcbb366243e224eab457"}
    r = http.get(f"{base}/100000/sign_d", params=vector)
    assert (r.status_code, r.json()["code"]) == (403, "SignatureExpired")
    wrong = http.get(f"{base}/100000/sign_d", params={**vector, "s": "0" * 32})
    assert (wrong.status_code, wrong.json()["code"]) == (403, "InvalidSignature")
    t = str(int(time.time()) + 600)
    s = hashlib.md5(f"api.shop.example-IAmASecret-{t}".encode()).hexdigest()
    ok = http.get(f"{base}/100000/sign_d", params={"host": "api.shop.example", "t": t, "s": s})
    assert ok.status_code == 200 and _two_of_east(ok.json()["ips"])


def _doh_query(name: str) -> bytes:
    q = DNSRecord.question(name, "A")
    q.header.id = 0  # RFC 8484 §4.1: id 0 keeps GET responses cacheable
    return bytes(q.pack())  # dnslib packs to a bytearray


def test_doh_get_and_post(base, http):
    wire = _doh_query("img.shop.example")
    encoded = base64.urlsafe_b64encode(wire).decode().rstrip("=")
    got = http.get(f"{base}/dns-query", params={"dns": encoded},
                   headers={"Accept": "application/dns-message"})  # fmt: skip
    assert got.headers["content-type"] == "application/dns-message"
    answer = DNSRecord.parse(got.content)
    assert answer.header.rcode == RCODE.NOERROR and answer.header.id == 0
    assert [QTYPE.get(rr.rtype) for rr in answer.rr] == ["CNAME", "CNAME", "A"]
    assert int(got.headers["cache-control"].split("=")[1]) <= 30
    posted = http.post(f"{base}/dns-query", content=wire,
                       headers={"Content-Type": "application/dns-message"})  # fmt: skip
    assert str(DNSRecord.parse(posted.content).rr[-1].rdata) == "127.30.1.1"
    assert http.get(f"{base}/dns-query", params={"dns": "!!!"}).status_code == 400
    assert http.post(f"{base}/dns-query", content=wire,
                     headers={"Content-Type": "text/plain"}).status_code == 415  # fmt: skip


def test_curl_resolves_through_doh_over_https_with_the_lab_ca(stack: Stack):
    """curl's own DoH client, verifying the lab CA, resolves the shop and reaches it."""
    ca = stack.run_dir / "pki" / "ca.crt"
    address = stack.topology.host("httpdns").address
    out = subprocess.run(
        ["curl", "-sS", "--doh-url", f"https://{address}/dns-query", "--cacert", str(ca),
         "-o", "/dev/null", "-w", "%{http_code} %{remote_ip}",
         "http://api.shop.example:8080/api/items/3"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    code, ip = out.stdout.split()
    assert code == "200" and ip in EAST, out.stderr
    # Without the lab CA the DoH server's certificate is refused.
    bad = subprocess.run(
        ["curl", "-sS", "--doh-url", f"https://{address}/dns-query",
         "http://api.shop.example:8080/api/items/3"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert bad.returncode != 0


def test_json_api(base):
    with httpx.Client(trust_env=False, timeout=10) as c:
        body = c.get(f"{base}/resolve", params={"name": "www.shop.example", "type": "A"}).json()
        assert body["Status"] == 0 and body["RA"] is True
        assert [a["type"] for a in body["Answer"]] == [5, 5, 5, 1, 1, 1]
        assert body["Answer"][-3]["data"] in EAST and body["Answer"][-1]["data"] in NORTH
        nx = c.get(f"{base}/resolve", params={"name": "nope.shop.example"}).json()
        assert nx["Status"] == 3 and nx["Authority"][0]["type"] == 6
        assert c.get(f"{base}/resolve", params={"name": "x", "type": "BOGUS"}).status_code == 400
