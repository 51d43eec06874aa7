"""HTTPDNS (role ``httpdns``): name resolution over HTTP for the phone's own address, not
its ISP resolver's. ``python -m dns.httpdns``.

It resolves iteratively with a resolver of its own (dns.resolver) and passes the phone's
address, as an RFC 7871 Client Subnet, to the authoritative servers, so a GSLB answers for
where the phone is. Four ways to ask:

* DNSPod style: ``GET /d?dn=NAME[,NAME…][&ip=ADDR][&ttl=1][&clientip=1]``, plain text:
  ``ip;ip`` (``,ttl`` appended with ``ttl=1``, ``|clientip`` with ``clientip=1``), one
  line ``name.:answer`` per name for a batch, ``0`` when a name has no address;
* Alibaba style: ``GET /{account}/d?host=NAME[&ip=ADDR]`` → JSON ``host``, ``ips``,
  ``ttl``, ``origin_ttl``, ``client_ip``; batch ``/{account}/resolve?host=a,b``; signed
  ``/{account}/sign_d?host=&t=EXPIRY&s=md5("host-secret-t")``; JSON errors ``{"code": …}``
  (``MissingArgument``, ``InvalidHost``, ``InvalidAccount``, ``InvalidSignature``,
  ``SignatureExpired``);
* DoH (RFC 8484): ``/dns-query``, GET with ``?dns=`` (base64url) or POST
  ``application/dns-message``, over HTTP and over HTTPS (the lab CA's certificate);
* the JSON API many DoH services offer: ``GET /resolve?name=&type=``.

Accounts and secrets: ``D11_HTTPDNS_ACCOUNTS`` (``id:secret,…``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import json
import re
import ssl
import time
from collections.abc import Sequence

from aiohttp import web
from dnslib import QTYPE, RCODE, DNSLabel, DNSRecord

from dns.message import client_subnet
from dns.resolver import Resolver, ServFail
from dns.zone import key
from infra.http import HttpServer, make_app
from infra.pki import ensure_server_cert, pki_dir
from infra.service import Component, Context, run

HOSTNAME = re.compile(r"^(?=.{1,253}\.?$)([A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?\.)*"
                      r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?\.?$")  # fmt: skip
MAX_BATCH = 10
DNS_MESSAGE = "application/dns-message"


def alibaba_error(status: int, code: str) -> web.Response:
    return web.json_response({"code": code}, status=status)


class HttpDns:
    def __init__(self, resolver: Resolver, accounts: dict[str, str]) -> None:
        self.resolver, self.accounts = resolver, accounts

    def client_ip(self, request: web.Request) -> str:
        return request.query.get("ip") or request.remote or ""

    async def addresses(self, name: str, client: str) -> tuple[list[str], int, int]:
        """A records for ``name`` as seen from ``client``: (addresses, ttl, origin ttl)."""
        subnet = client_subnet(client, None)
        try:
            outcome = await self.resolver.resolve(DNSLabel(name), QTYPE.A, subnet)
        except ServFail:
            return [], 0, 0
        records = [rr for rr in outcome.answer if rr.rtype == QTYPE.A]
        if outcome.rcode != RCODE.NOERROR or not records:
            return [], 0, 0
        ttl = min(rr.ttl for rr in records)
        origin = self.resolver.origin_ttl(key(records[0].rname), QTYPE.A) or ttl
        return [str(rr.rdata) for rr in records], ttl, origin

    # -- DNSPod ---------------------------------------------------------------------------
    async def dnspod(self, request: web.Request) -> web.Response:
        names = [n for n in request.query.get("dn", "").split(",") if n]
        client = self.client_ip(request)
        if not names or len(names) > MAX_BATCH or not all(HOSTNAME.match(n) for n in names):
            return web.Response(text="", content_type="text/plain")  # DNSPod: empty body
        if not _valid_ip(client):
            return web.Response(text="", content_type="text/plain")
        lines = []
        for name in names:
            ips, ttl, _ = await self.addresses(name, client)
            answer = ";".join(ips) if ips else "0"
            if ips and request.query.get("ttl") == "1":
                answer += f",{ttl}"
            if request.query.get("clientip") == "1":
                answer += f"|{client}"
            lines.append(answer if len(names) == 1 else f"{name.rstrip('.')}.:{answer}")
        return web.Response(text="\n".join(lines), content_type="text/plain")

    # -- Alibaba --------------------------------------------------------------------------
    def _account(self, request: web.Request) -> str | None:
        account = request.match_info["account"]
        return account if account in self.accounts else None

    async def _one(self, host: str, client: str) -> dict:
        ips, ttl, origin = await self.addresses(host, client)
        return {"host": host, "ips": ips, "ttl": ttl, "origin_ttl": origin, "client_ip": client}

    async def alibaba_d(self, request: web.Request) -> web.Response:
        if self._account(request) is None:
            return alibaba_error(404, "InvalidAccount")
        host = request.query.get("host")
        if not host:
            return alibaba_error(400, "MissingArgument")
        if not HOSTNAME.match(host):
            return alibaba_error(400, "InvalidHost")
        client = self.client_ip(request)
        if not _valid_ip(client):
            return alibaba_error(400, "InvalidIp")
        return web.json_response(await self._one(host, client))

    async def alibaba_resolve(self, request: web.Request) -> web.Response:
        if self._account(request) is None:
            return alibaba_error(404, "InvalidAccount")
        hosts = [h for h in request.query.get("host", "").split(",") if h]
        if not hosts:
            return alibaba_error(400, "MissingArgument")
        if len(hosts) > MAX_BATCH or not all(HOSTNAME.match(h) for h in hosts):
            return alibaba_error(400, "InvalidHost")
        client = self.client_ip(request)
        if not _valid_ip(client):
            return alibaba_error(400, "InvalidIp")
        found = [await self._one(h, client) for h in hosts]
        return web.json_response({"dns": [{**f, "type": 1} for f in found]})

    async def alibaba_sign_d(self, request: web.Request) -> web.Response:
        account = self._account(request)
        if account is None:
            return alibaba_error(404, "InvalidAccount")
        host, t, s = (request.query.get(k) for k in ("host", "t", "s"))
        if not host or not t or not s:
            return alibaba_error(400, "MissingArgument")
        if not HOSTNAME.match(host):
            return alibaba_error(400, "InvalidHost")
        if not sign_ok(host, self.accounts[account], t, s):
            return alibaba_error(403, "InvalidSignature")
        if int(t) < time.time():
            return alibaba_error(403, "SignatureExpired")
        client = self.client_ip(request)
        if not _valid_ip(client):
            return alibaba_error(400, "InvalidIp")
        return web.json_response(await self._one(host, client))

    # -- DoH and its JSON API --------------------------------------------------------------
    async def doh(self, request: web.Request) -> web.Response:
        if request.method == "GET":
            encoded = request.query.get("dns")
            if not encoded:
                return web.Response(status=400, text="missing dns parameter")
            try:
                wire = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
            except (binascii.Error, ValueError):
                return web.Response(status=400, text="dns is not base64url")
        else:
            if request.content_type != DNS_MESSAGE:
                return web.Response(status=415, text=f"expected {DNS_MESSAGE}")
            wire = await request.read()
        if len(wire) < 12:
            return web.Response(status=400, text="not a DNS message")
        # The phone's address is the client: the resolver forwards it as Client Subnet.
        reply = await self.resolver.respond(wire, True, request.remote or "")
        if reply is None:
            return web.Response(status=400, text="not a DNS query")
        headers = {"Cache-Control": f"max-age={_min_ttl(reply)}"}
        return web.Response(body=reply, content_type=DNS_MESSAGE, headers=headers)

    async def json_api(self, request: web.Request) -> web.Response:
        name = request.query.get("name")
        if not name or not HOSTNAME.match(name):
            return web.json_response({"Status": RCODE.FORMERR, "Comment": "bad name"}, status=400)
        qtype_name = request.query.get("type", "A").upper()
        try:
            qtype = int(qtype_name) if qtype_name.isdigit() else getattr(QTYPE, qtype_name)
        except Exception:  # dnslib raises its own error for unknown names
            qtype = None
        if not isinstance(qtype, int) or not 0 < qtype < 65536:
            return web.json_response({"Status": RCODE.FORMERR, "Comment": "bad type"}, status=400)
        client = request.query.get("edns_client_subnet", "").split("/")[0] or request.remote
        try:
            outcome = await self.resolver.resolve(
                DNSLabel(name), qtype, client_subnet(client or "", None)
            )
            status = outcome.rcode
        except ServFail:
            outcome, status = None, RCODE.SERVFAIL
        body = {
            "Status": status, "TC": False, "RD": True, "RA": True, "AD": False, "CD": False,
            "Question": [{"name": name.rstrip(".") + ".", "type": qtype}],
        }  # fmt: skip
        if outcome is not None:
            body["Answer"] = [_json_rr(rr) for rr in outcome.answer]
            if outcome.authority:
                body["Authority"] = [_json_rr(rr) for rr in outcome.authority]
        return web.Response(text=json.dumps(body), content_type="application/dns-json")


def sign_ok(host: str, secret: str, t: str, s: str) -> bool:
    """Alibaba's signed request: s = md5("{host}-{secret}-{t}"), compared in constant time."""
    expected = hashlib.md5(f"{host}-{secret}-{t}".encode()).hexdigest()
    return t.isdigit() and hmac.compare_digest(expected, s.lower())


def _json_rr(rr) -> dict:
    data = str(rr.rdata)
    return {"name": str(rr.rname), "type": rr.rtype, "TTL": rr.ttl, "data": data}


def _min_ttl(wire: bytes) -> int:
    try:
        record = DNSRecord.parse(wire)
    except Exception:
        return 0
    ttls = [rr.ttl for rr in record.rr + record.auth]
    return min(ttls) if ttls else 0


def _valid_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


async def build(ctx: Context) -> Sequence[Component]:
    s = ctx.settings
    resolver = Resolver(s.get_list("ROOT_HINTS"), port=s.get_int("UPSTREAM_PORT", 53))
    accounts = dict(
        item.split(":", 1) for item in s.get_list("HTTPDNS_ACCOUNTS", ["100000:IAmASecret"])
    )
    api = HttpDns(resolver, accounts)

    def app() -> web.Application:  # one per listener: an aiohttp app has one runner
        a = make_app(ctx)
        a.router.add_get("/d", api.dnspod)
        a.router.add_get("/resolve", api.json_api)
        a.router.add_route("*", "/dns-query", api.doh)
        a.router.add_get(r"/{account:\d+}/d", api.alibaba_d)
        a.router.add_get(r"/{account:\d+}/resolve", api.alibaba_resolve)
        a.router.add_get(r"/{account:\d+}/sign_d", api.alibaba_sign_d)
        return a

    cert, key_path = ensure_server_cert(
        pki_dir(s.env, s.run_dir), "httpdns", ["httpdns.example", s.address]
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key_path)
    context.set_alpn_protocols(["http/1.1"])
    return [
        HttpServer(app(), s.address, s.port),
        HttpServer(app(), s.address, s.get_int("HTTPS_PORT", 443), ssl_context=context),
    ]


def main() -> None:
    run(build, name="httpdns", role="httpdns", port=80)


if __name__ == "__main__":
    main()
