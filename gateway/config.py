"""The gateway's configuration: nginx's own language, parsed by crossplane, checked here.

Only the directives listed in ``ALLOWED`` are accepted, each in the contexts nginx allows
it; anything else is refused with ``file:line`` the way ``nginx -t`` refuses it, so a
config that starts here means what it would mean to nginx. Values are read as nginx reads
them (``10s``, ``500ms``, ``1m``, ``10r/s``, ``1k``) and inherited http → server →
location as nginx merges them.

Upstream addresses are the one thing a deployment fills in: ``D11_UPSTREAM_<NAME>``
(``host:port,…``, in the order of the block's ``server`` lines) replaces the addresses of
upstream ``<name>``, keeping each line's parameters. Process mode and containers set it
from the topology, as a deploy tool would fill an nginx template.

Beyond open-source nginx, ``gateway/extensions.conf`` (a separate file, never included by
``gateway.conf``) adds active health checks: ``health_check UPSTREAM interval=1s
uri=/healthz fails=1 passes=1 timeout=1s;``, and ``problem_errors /api/;``: the gateway's
own errors (429, 502, 503, 504, ...) under those prefixes are ``application/problem+json``
(RFC 9457), the API's error language, instead of nginx's HTML page.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import crossplane

from infra.config import ConfigError as BaseConfigError


class ConfigError(BaseConfigError):
    """A configuration nginx would also refuse; the message ends with ``file:line``."""


Directive = dict[str, Any]

# directive -> context it may appear in -> (min args, max args or None)
ALLOWED: dict[str, dict[str, tuple[int, int | None]]] = {}


def _allow(contexts: str, lo: int, hi: int | None, *names: str) -> None:
    for name in names:
        for context in contexts.split():
            ALLOWED.setdefault(name, {})[context] = (lo, hi)


_allow("main", 1, 1, "worker_processes", "pid", "error_log")
_allow("main", 0, 0, "events", "http")
_allow("events", 1, 1, "worker_connections")
_allow("http", 1, 1, "upstream")
_allow("http", 3, 3, "limit_req_zone")
_allow("http", 2, None, "log_format")
_allow("http server location", 1, 2, "access_log")
_allow("http server location", 1, 1, "client_max_body_size", "limit_req_status")
_allow("http server location", 1, 1, "proxy_connect_timeout", "proxy_read_timeout")
_allow("http server location", 1, 1, "proxy_next_upstream_tries", "proxy_http_version")
_allow("http server location", 1, 1, "keepalive_timeout", "client_header_timeout")
_allow("http server location", 1, 1, "client_body_timeout", "server_tokens")
_allow("http server location", 1, None, "proxy_next_upstream")
_allow("http server location", 2, 2, "proxy_set_header")
_allow("http server location", 2, 3, "add_header")
_allow("http server location", 1, 3, "limit_req")
_allow("http", 0, 0, "server")
_allow("server", 1, None, "listen", "server_name")
_allow("server", 1, 1, "ssl_certificate", "ssl_certificate_key")
_allow("server", 1, None, "ssl_protocols")
_allow("server location", 1, 2, "location")
_allow("location", 1, 1, "proxy_pass")
_allow("server location", 1, 2, "return")
_allow("upstream", 1, None, "server")
_allow("upstream", 0, 0, "least_conn")
_allow("upstream", 1, 2, "hash")
_allow("upstream", 1, 1, "keepalive")
# Double-11 extension (extensions.conf only): active probes, as NGINX Plus's health_check.
EXTENSIONS = {"health_check": {"main": (1, None)}, "problem_errors": {"main": (1, None)}}

NEXT_UPSTREAM = frozenset(
    [
        "error",
        "timeout",
        "invalid_header",
        "http_500",
        "http_502",
        "http_503",
        "http_504",
        "http_403",
        "http_404",
        "http_429",
        "non_idempotent",
        "off",
    ]
)
BLOCKS = {"events", "http", "upstream", "server", "location"}

VARIABLES = frozenset(
    [
        "remote_addr",
        "binary_remote_addr",
        "remote_port",
        "request_id",
        "host",
        "scheme",
        "request",
        "request_method",
        "request_uri",
        "uri",
        "args",
        "server_port",
        "server_addr",
        "status",
        "body_bytes_sent",
        "bytes_sent",
        "request_time",
        "upstream_addr",
        "upstream_status",
        "upstream_response_time",
        "upstream_connect_time",
        "time_local",
        "time_iso8601",
        "msec",
        "proxy_add_x_forwarded_for",
        "limit_req_status",
        "request_length",
        "connection",
        "server_name",
        "pid",
        "hostname",
    ]
)
_VAR = re.compile(r"\$(?:\{(\w+)\}|(\w+))")

DEFAULT_LOG_FORMAT = (
    '$remote_addr - - [$time_local] "$request" $status $body_bytes_sent '
    '"$http_referer" "$http_user_agent"'
)


def _where(d: Directive) -> str:
    return f"{d.get('file', '?')}:{d.get('line', '?')}"


def fail(d: Directive, message: str) -> ConfigError:
    return ConfigError(f"{message} in {_where(d)}")


def check_variables(d: Directive, text: str) -> None:
    for match in _VAR.finditer(text):
        name = match.group(1) or match.group(2)
        if name in VARIABLES or name.startswith(("http_", "arg_", "cookie_", "sent_http_")):
            continue
        raise fail(d, f'unknown "{name}" variable')


_TIME = re.compile(r"(\d+)(ms|s|m|h|d)?$")
_TIME_UNITS = {"ms": 0.001, "s": 1, None: 1, "m": 60, "h": 3600, "d": 86400}
_SIZE = re.compile(r"(\d+)([kKmMgG])?$")


def parse_time(d: Directive, value: str) -> float:
    m = _TIME.match(value)
    if not m:
        raise fail(d, f'invalid time "{value}"')
    return int(m.group(1)) * _TIME_UNITS[m.group(2)]


def parse_size(d: Directive, value: str) -> int:
    m = _SIZE.match(value)
    if not m:
        raise fail(d, f'invalid size "{value}"')
    unit = (m.group(2) or "").lower()
    return int(m.group(1)) * {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[unit]


# -- the model ------------------------------------------------------------------------


@dataclass
class UpstreamServer:
    address: str
    weight: int = 1
    max_fails: int = 1
    fail_timeout: float = 10.0
    backup: bool = False
    down: bool = False


@dataclass
class HealthCheck:
    interval: float = 5.0
    uri: str = "/healthz"
    fails: int = 1
    passes: int = 1
    timeout: float = 1.0


@dataclass
class Upstream:
    name: str
    servers: list[UpstreamServer]
    method: str = "round_robin"  # | least_conn | hash
    hash_key: str = ""
    consistent: bool = False
    keepalive: int = 0
    health_check: HealthCheck | None = None


@dataclass(frozen=True)
class LimitZone:
    name: str
    key: str  # a variable: $binary_remote_addr, $http_x_user_id, ...
    rate: float  # requests per second
    size: int


@dataclass(frozen=True)
class LimitReq:
    zone: str
    burst: int = 0
    delay: float = 0  # requests served without delay; inf = nodelay


@dataclass
class Settings:
    """What nginx inherits from outer blocks unless an inner one sets it."""

    client_max_body_size: int = 1024 * 1024
    proxy_connect_timeout: float = 60.0
    proxy_read_timeout: float = 60.0
    proxy_next_upstream: frozenset[str] = frozenset({"error", "timeout"})
    proxy_next_upstream_tries: int = 0
    proxy_set_header: tuple[tuple[str, str], ...] = ()
    limit_req: tuple[LimitReq, ...] = ()
    limit_req_status: int = 503
    access_log: tuple[tuple[str, str], ...] = ()  # (path, format); () = off
    add_header: tuple[tuple[str, str, bool], ...] = ()  # (name, value, always)
    keepalive_timeout: float = 75.0
    client_header_timeout: float = 60.0
    client_body_timeout: float = 60.0


@dataclass
class Location:
    modifier: str  # "" | "=" | "^~" | "~" | "~*"
    path: str
    settings: Settings
    proxy_pass: str | None = None  # upstream name or host:port
    proxy_uri: str | None = None  # a URI part in proxy_pass replaces the matched prefix
    ret: tuple[int, str] | None = None
    regex: re.Pattern[str] | None = None
    line: str = ""

    def route(self) -> str:
        return f"{self.modifier} {self.path}".strip()


@dataclass
class Listen:
    port: int
    ssl: bool = False
    address: str | None = None


@dataclass
class Server:
    listens: list[Listen]
    names: list[str]
    settings: Settings
    locations: list[Location]
    ssl_certificate: str | None = None
    ssl_certificate_key: str | None = None
    ret: tuple[int, str] | None = None


@dataclass
class Config:
    path: Path
    worker_processes: int = 1
    worker_connections: int = 512
    upstreams: dict[str, Upstream] = field(default_factory=dict)
    zones: dict[str, LimitZone] = field(default_factory=dict)
    log_formats: dict[str, str] = field(default_factory=lambda: {"combined": DEFAULT_LOG_FORMAT})
    servers: list[Server] = field(default_factory=list)
    # Extension: URI prefixes under which the gateway's own errors are RFC 9457 problems.
    problem_prefixes: tuple[str, ...] = ()


# -- reading -----------------------------------------------------------------------------


def _parse_file(path: Path) -> list[Directive]:
    try:
        payload = crossplane.parse(
            str(path), catch_errors=False, combine=True, check_ctx=False, check_args=False
        )
    except crossplane.errors.NgxParserBaseException as exc:
        raise ConfigError(f"{exc.strerror} in {exc.filename}:{exc.lineno}") from None
    except OSError as exc:
        raise ConfigError(f'open() "{path}" failed ({exc.strerror})') from None
    for error in payload.get("errors") or ():
        # crossplane records an include it could not open instead of raising: say it as
        # nginx does, naming the file and the include's line.
        message = str(error.get("error", ""))
        missing = re.search(r"\[Errno (\d+)\] ([^:]+): '([^']+)'", message)
        if missing:
            errno, reason, name = missing.groups()
            message = f'open() "{name}" failed ({errno}: {reason})'
        raise ConfigError(f"{message} in {error.get('file', path)}:{error.get('line', '?')}")
    parsed = payload["config"][0]["parsed"]
    _unescape(parsed)
    return parsed


_ESCAPES = {"\\n": "\n", "\\r": "\r", "\\t": "\t"}


def _unescape(directives: list[Directive]) -> None:
    """nginx's tokenizer turns \\n, \\r and \\t into the characters; crossplane keeps them."""
    for d in directives:
        args = d["args"]
        for i, arg in enumerate(args):
            if "\\" in arg:
                for escaped, char in _ESCAPES.items():
                    arg = arg.replace(escaped, char)
                args[i] = arg
        _unescape(d.get("block", []))


def _check(directives: list[Directive], context: str, allowed: Mapping) -> None:
    for d in directives:
        name = d["directive"]
        spec = allowed.get(name)
        if spec is None:
            raise fail(d, f'unknown directive "{name}"')
        if context not in spec:
            raise fail(d, f'"{name}" directive is not allowed here')
        lo, hi = spec[context]
        n = len(d["args"])
        if n < lo or (hi is not None and n > hi):
            raise fail(d, f'invalid number of arguments in "{name}" directive')
        block = name in BLOCKS and not (name == "server" and context == "upstream")
        if ("block" in d) != block:
            message = f'directive "{name}" has no opening "{{"'
            raise fail(d, message if block else f'unexpected "{{" after "{name}"')

        if "block" in d:
            _check(d["block"], name, allowed)


def load(
    path: Path | str,
    env: Mapping[str, str] | None = None,
    extensions: Path | str | None = None,
) -> Config:
    """Read and check a config; raises ConfigError naming ``file:line``."""
    path = Path(path).resolve()
    parsed = _parse_file(path)
    _check(parsed, "main", ALLOWED)
    config = Config(path=path)
    for d in parsed:
        name, args = d["directive"], d["args"]
        if name == "worker_processes":
            if args[0] == "auto":
                import os

                config.worker_processes = os.cpu_count() or 1
            elif args[0].isdigit() and int(args[0]) > 0:
                config.worker_processes = int(args[0])
            else:
                raise fail(d, f'invalid value "{args[0]}"')
        elif name == "events":
            for e in d["block"]:
                config.worker_connections = _positive(e, e["args"][0])
        elif name == "http":
            _http(config, d["block"])
    if extensions is not None:
        ext = _parse_file(Path(extensions).resolve())
        _check(ext, "main", EXTENSIONS)
        for d in ext:
            if d["directive"] == "problem_errors":
                if not all(a.startswith("/") for a in d["args"]):
                    raise fail(d, "problem_errors takes URI prefixes (/api/)")
                config.problem_prefixes += tuple(d["args"])
            else:
                _health_check(config, d)
    _fill_addresses(config, env or {})
    if not config.servers:
        raise ConfigError(f"no server block in {path}")
    return config


def _positive(d: Directive, value: str) -> int:
    if not value.isdigit() or int(value) <= 0:
        raise fail(d, f'invalid value "{value}"')
    return int(value)


def _http(config: Config, block: list[Directive]) -> None:
    settings = Settings()
    server_blocks = []
    for d in block:
        name, args = d["directive"], d["args"]
        if name == "upstream":
            if args[0] in config.upstreams:
                raise fail(d, f'duplicate upstream "{args[0]}"')
            config.upstreams[args[0]] = _upstream(args[0], d["block"], d)
        elif name == "limit_req_zone":
            zone = _zone(d)
            config.zones[zone.name] = zone
        elif name == "log_format":
            fmt = "".join(args[1:])
            check_variables(d, fmt)
            config.log_formats[args[0]] = fmt
        elif name == "server":
            server_blocks.append(d)
        else:
            settings = _setting(config, settings, d)
    for d in server_blocks:
        config.servers.append(_server(config, settings, d["block"]))
    for server in config.servers:
        for location in server.locations:
            for limit in location.settings.limit_req:
                if limit.zone not in config.zones:
                    raise ConfigError(f'zero size shared memory zone "{limit.zone}"')
            target = location.proxy_pass
            if target and ":" not in target and target not in config.upstreams:
                raise ConfigError(f'host not found in upstream "{target}" in {location.line}')


def _upstream(name: str, block: list[Directive], where: Directive) -> Upstream:
    upstream = Upstream(name, [])
    for d in block:
        directive, args = d["directive"], d["args"]
        if directive == "server":
            upstream.servers.append(_upstream_server(d))
        elif directive == "least_conn":
            upstream.method = "least_conn"
        elif directive == "hash":
            if len(args) == 2 and args[1] != "consistent":
                raise fail(d, f'invalid parameter "{args[1]}"')
            check_variables(d, args[0])
            upstream.method, upstream.hash_key = "hash", args[0]
            upstream.consistent = len(args) == 2
        elif directive == "keepalive":
            upstream.keepalive = _positive(d, args[0])
    if not upstream.servers:
        raise fail(where, f'no servers are inside upstream "{name}"')
    if upstream.method == "hash" and any(s.backup for s in upstream.servers):
        raise ConfigError(f'balancing method does not support parameter "backup" ({name})')
    return upstream


def _upstream_server(d: Directive) -> UpstreamServer:
    address, *params = d["args"]
    if ":" not in address:
        address += ":80"
    server = UpstreamServer(address)
    for p in params:
        key, _, value = p.partition("=")
        if key == "weight":
            server.weight = _positive(d, value)
        elif key == "max_fails":
            if not value.isdigit():
                raise fail(d, f'invalid parameter "{p}"')
            server.max_fails = int(value)
        elif key == "fail_timeout":
            server.fail_timeout = parse_time(d, value)
        elif p == "backup":
            server.backup = True
        elif p == "down":
            server.down = True
        else:
            raise fail(d, f'invalid parameter "{p}"')
    return server


def _zone(d: Directive) -> LimitZone:
    key, zone, rate = d["args"]
    check_variables(d, key)
    m = re.fullmatch(r"zone=(\w[\w-]*):(\w+)", zone)
    r = re.fullmatch(r"rate=(\d+)r/(s|m)", rate)
    if not m or not r:
        raise fail(d, f'invalid parameter "{zone if not m else rate}"')
    per_second = int(r.group(1)) / (1 if r.group(2) == "s" else 60)
    return LimitZone(m.group(1), key, per_second, parse_size(d, m.group(2)))


def _limit_req(d: Directive) -> LimitReq:
    zone, burst, delay = "", 0, 0.0
    for p in d["args"]:
        key, _, value = p.partition("=")
        if key == "zone":
            zone = value
        elif key == "burst":
            burst = _positive(d, value)
        elif key == "delay":
            if not value.isdigit():
                raise fail(d, f'invalid delay "{value}"')
            delay = int(value)
        elif p == "nodelay":
            delay = float("inf")
        else:
            raise fail(d, f'invalid parameter "{p}"')
    if not zone:
        raise fail(d, '"limit_req" must have "zone" parameter')
    return LimitReq(zone, burst, delay)


def _setting(config: Config, s: Settings, d: Directive) -> Settings:
    """A copy of ``s`` with one inheritable directive applied. As in nginx, a list-valued
    directive (proxy_set_header, limit_req, access_log) given at a level replaces the
    whole inherited list, not one entry of it."""
    name, args = d["directive"], d["args"]
    if name == "client_max_body_size":
        return replace(s, client_max_body_size=parse_size(d, args[0]))
    if name in ("proxy_connect_timeout", "proxy_read_timeout", "keepalive_timeout"):
        return replace(s, **{name: parse_time(d, args[0])})
    if name in ("client_header_timeout", "client_body_timeout"):
        return replace(s, **{name: parse_time(d, args[0])})
    if name == "proxy_next_upstream":
        for a in args:
            if a not in NEXT_UPSTREAM:
                raise fail(d, f'invalid value "{a}"')
        return replace(s, proxy_next_upstream=frozenset(args) - {"off"})
    if name == "proxy_next_upstream_tries":
        if not args[0].isdigit():
            raise fail(d, f'invalid value "{args[0]}"')
        return replace(s, proxy_next_upstream_tries=int(args[0]))
    if name == "proxy_set_header":
        check_variables(d, args[1])
        return replace(s, proxy_set_header=(*s.proxy_set_header, (args[0], args[1])))
    if name == "add_header":
        if len(args) == 3 and args[2] != "always":
            raise fail(d, f'invalid parameter "{args[2]}"')
        check_variables(d, args[1])
        return replace(s, add_header=(*s.add_header, (args[0], args[1], len(args) == 3)))
    if name == "limit_req":
        return replace(s, limit_req=(*s.limit_req, _limit_req(d)))
    if name == "limit_req_status":
        code = int(args[0]) if args[0].isdigit() else 0
        if not 400 <= code <= 599:
            raise fail(d, f'value must be between 400 and 599 ("{args[0]}")')
        return replace(s, limit_req_status=code)
    if name == "access_log":
        if args[0] == "off":
            return replace(s, access_log=())
        fmt = args[1] if len(args) > 1 else "combined"
        if fmt not in config.log_formats:
            raise fail(d, f'unknown log format "{fmt}"')
        return replace(s, access_log=(*s.access_log, (args[0], fmt)))
    if name == "proxy_http_version":
        if args[0] not in ("1.0", "1.1"):
            raise fail(d, f'invalid value "{args[0]}"')
        return s
    if name == "server_tokens":
        return s
    raise fail(d, f'"{name}" directive is not allowed here')


def _return(d: Directive) -> tuple[int, str]:
    code, *text = d["args"]
    if not code.isdigit() or not 0 <= int(code) <= 999:
        raise fail(d, f'invalid return code "{code}"')
    return int(code), text[0] if text else ""


def _fresh_lists(s: Settings, block: list[Directive]) -> Settings:
    """Inner blocks that set a list directive start that list afresh (nginx semantics)."""
    present = {d["directive"] for d in block}
    fresh = {}
    for name in ("proxy_set_header", "limit_req", "access_log", "add_header"):
        if name in present:
            fresh[name] = ()
    return replace(s, **fresh)


def _server(config: Config, inherited: Settings, block: list[Directive]) -> Server:
    settings = _fresh_lists(inherited, block)
    server = Server([], [], settings, [])
    location_blocks = []
    for d in block:
        name, args = d["directive"], d["args"]
        if name == "listen":
            server.listens.append(_listen(d))
        elif name == "server_name":
            server.names.extend(args)
        elif name in ("ssl_certificate", "ssl_certificate_key"):
            setattr(server, name, args[0])
        elif name == "ssl_protocols":
            pass  # TLS 1.2+ is what Python's ssl module offers; the directive is accepted
        elif name == "location":
            location_blocks.append(d)
        elif name == "return":
            server.ret = _return(d)
        else:
            settings = _setting(config, settings, d)
    server.settings = settings
    if not server.listens:
        server.listens.append(Listen(80))
    if any(listen.ssl for listen in server.listens) and not server.ssl_certificate:
        raise ConfigError(f'no "ssl_certificate" is defined for the "listen ... ssl" in '
                          f"{_where(block[0]) if block else config.path}")  # fmt: skip
    seen = set()
    for d in location_blocks:
        location = _location(config, settings, d)
        key = (location.modifier if location.modifier in ("=", "~", "~*") else "", location.path)
        if key in seen:
            raise fail(d, f'duplicate location "{location.path}"')
        seen.add(key)
        server.locations.append(location)
    return server


def _listen(d: Directive) -> Listen:
    spec, *params = d["args"]
    address, _, port = spec.rpartition(":")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise fail(d, f'invalid port in "{spec}" of the "listen" directive')
    for p in params:
        if p not in ("ssl", "reuseport", "default_server", "http2"):
            raise fail(d, f'invalid parameter "{p}"')
    return Listen(int(port), "ssl" in params, address or None)


def _location(config: Config, inherited: Settings, d: Directive) -> Location:
    args = d["args"]
    modifier, path = (args[0], args[1]) if len(args) == 2 else ("", args[0])
    if modifier not in ("", "=", "~", "~*", "^~"):
        raise fail(d, f'invalid location modifier "{modifier}"')
    settings = _fresh_lists(inherited, d["block"])
    location = Location(modifier, path, settings, line=_where(d))
    if modifier in ("~", "~*"):
        try:
            location.regex = re.compile(path, re.IGNORECASE if modifier == "~*" else 0)
        except re.error as exc:
            raise fail(d, f'pcre_compile() failed: {exc} in "{path}"') from None
    for inner in d["block"]:
        name, iargs = inner["directive"], inner["args"]
        if name == "location":
            raise fail(inner, "nested locations are not supported here")
        if name == "proxy_pass":
            location.proxy_pass, location.proxy_uri = _proxy_pass(inner, iargs[0])
        elif name == "return":
            location.ret = _return(inner)
        else:
            settings = _setting(config, settings, inner)
    location.settings = settings
    if location.proxy_pass is None and location.ret is None:
        raise fail(d, f'location "{path}" has neither "proxy_pass" nor "return"')
    if location.regex is not None and location.proxy_uri:
        raise fail(d, '"proxy_pass" cannot have URI part in location given by regular expression')
    return location


def _proxy_pass(d: Directive, url: str) -> tuple[str, str | None]:
    m = re.fullmatch(r"http://([^/]+)(/.*)?", url)
    if not m:
        raise fail(d, f'invalid URL prefix in "{url}"')
    return m.group(1), m.group(2)


def _health_check(config: Config, d: Directive) -> None:
    name, *params = d["args"]
    upstream = config.upstreams.get(name)
    if upstream is None:
        raise fail(d, f'health_check for unknown upstream "{name}"')
    check = HealthCheck()
    for p in params:
        key, _, value = p.partition("=")
        if key in ("interval", "timeout"):
            setattr(check, key, parse_time(d, value))
        elif key in ("fails", "passes"):
            setattr(check, key, _positive(d, value))
        elif key == "uri" and value.startswith("/"):
            check.uri = value
        else:
            raise fail(d, f'invalid parameter "{p}"')
    upstream.health_check = check


def _fill_addresses(config: Config, env: Mapping[str, str]) -> None:
    for name, upstream in config.upstreams.items():
        key = "D11_UPSTREAM_" + re.sub(r"\W", "_", name).upper()
        raw = env.get(key)
        if not raw:
            continue
        addresses = [a.strip() for a in raw.split(",") if a.strip()]
        if len(addresses) != len(upstream.servers):
            raise ConfigError(
                f"{key} lists {len(addresses)} addresses; upstream {name!r} in "
                f"{config.path} has {len(upstream.servers)} server lines"
            )
        for server, address in zip(upstream.servers, addresses, strict=True):
            server.address = address
