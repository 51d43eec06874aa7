"""HTTP caching semantics, pure functions (no I/O): what RFC 9111 asks of a shared cache,
RFC 5861's stale extensions, and RFC 9110's conditional and range requests.

The origin and the cache nodes both use this module, so a 304 or a 206 means the same on
every tier.
"""

from __future__ import annotations

import calendar
import email.utils
import re
import time
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

# Status codes a cache may give a heuristic lifetime (RFC 9110 §15.1, "heuristically
# cacheable"); any other status is stored only with explicit freshness.
HEURISTIC_STATUSES = frozenset({200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, 501})
# The statuses a cache node stores at all (it understands these).
STORABLE_STATUSES = frozenset({200, 203, 300, 301, 308, 404, 410})
HEURISTIC_FRACTION = 0.1  # RFC 9111 §4.2.2: "10% of the interval since Last-Modified"
HEURISTIC_CAP = 86400.0

# Hop-by-hop headers (RFC 9110 §7.6.1): never stored, never forwarded.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)

_DIRECTIVE = re.compile(
    r'\s*([!#$%&\'*+.^_`|~0-9A-Za-z-]+)\s*(?:=\s*("(?:[^"\\]|\\.)*"|[^,\s]*))?\s*'
)


def connection_listed(headers: Iterable[tuple[str, str]]) -> frozenset[str]:
    """Header names the Connection field lists: hop-by-hop for this connection only, so
    never stored or forwarded (RFC 9110 §7.6.1, RFC 9111 §3.1)."""
    listed = header_all(headers, "Connection")
    return frozenset(t.strip().lower() for t in listed.split(",") if t.strip())


def same_origin_target(value: str | None, host: str, base: str) -> str | None:
    """A Location or Content-Location value as a path?query on ``host``, resolved against
    ``base``; None when absent or on another host (RFC 9111 §4.4 invalidates only those
    on the same host, so one site cannot evict another's responses)."""
    if not value:
        return None
    parsed = urllib.parse.urlsplit(urllib.parse.urljoin(f"http://{host}{base}", value.strip()))
    if parsed.scheme not in ("http", "https") or (parsed.netloc or "").lower() != host.lower():
        return None
    return parsed.path + (f"?{parsed.query}" if parsed.query else "")


def header(headers: Iterable[tuple[str, str]], name: str) -> str | None:
    """The first value of ``name`` in a header list (names compared case-insensitively)."""
    lower = name.lower()
    for key, value in headers:
        if key.lower() == lower:
            return value
    return None


def header_all(headers: Iterable[tuple[str, str]], name: str) -> str:
    """Every value of ``name`` joined with ", " (a list-valued header sent several times)."""
    lower = name.lower()
    return ", ".join(v for k, v in headers if k.lower() == lower)


def cache_control(value: str | None) -> dict[str, str | None]:
    """Cache-Control directives, names lower-cased; ``None`` for a directive without a value.
    A malformed member is skipped; the first occurrence of a directive wins (RFC 9111 §4.2.1
    says a duplicate makes the value invalid, and a cache then treats it as stale)."""
    out: dict[str, str | None] = {}
    if not value:
        return out
    for part in _split_commas(value):
        m = _DIRECTIVE.fullmatch(part)
        if not m:
            continue
        name, arg = m.group(1).lower(), m.group(2)
        if arg is not None and arg.startswith('"'):
            arg = re.sub(r"\\(.)", r"\1", arg[1:-1])
        if name in out:
            out[name] = "invalid"  # a duplicated lifetime is not a lifetime
            continue
        out[name] = arg
    return out


def _split_commas(value: str) -> list[str]:
    parts, current, quoted, escaped = [], [], False, False
    for ch in value:
        if escaped:
            escaped = False
        elif ch == "\\" and quoted:
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == "," and not quoted:
            parts.append("".join(current))
            current = []
            continue
        current.append(ch)
    parts.append("".join(current))
    return [p for p in parts if p.strip()]


def seconds(directives: Mapping[str, str | None], name: str) -> int | None:
    """A delta-seconds directive; ``None`` when absent or malformed."""
    raw = directives.get(name)
    if raw is None or not raw.isdigit():
        return None
    return min(int(raw), 2**31)  # RFC 9111 §1.2.2: at most 2^31


_MONTHS = {m: i for i, m in enumerate(
    ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), 1)}
_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_LONG_DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_TIME = r"(\d\d):(\d\d):(\d\d)"
# RFC 9110 §5.6.7, exactly: IMF-fixdate, and the two obsolete forms a recipient accepts.
# Names are matched without regard to case; spacing, digits and "GMT" are not negotiable.
_IMF = re.compile(rf"([a-z]{{3}}), (\d\d) ([a-z]{{3}}) (\d{{4}}) {_TIME} gmt")
_RFC850 = re.compile(rf"([a-z]{{6,9}}), (\d\d)-([a-z]{{3}})-(\d\d) {_TIME} gmt")
_ASCTIME = re.compile(rf"([a-z]{{3}}) ([a-z]{{3}}) ([ \d]\d) {_TIME} (\d{{4}})")


def http_date(value: str | None) -> float | None:
    """An HTTP-date (IMF-fixdate, RFC 850 or asctime) as a Unix time; ``None`` if invalid:
    another time zone, a two-digit year outside RFC 850, a missing comma, extra spaces,
    dashes or periods where the grammar has none, a one-digit hour (RFC 9111 §5.3 then
    makes an Expires "already expired")."""
    if not value:
        return None
    text = value.strip().lower()
    if m := _IMF.fullmatch(text):
        day, mday, month, year, hh, mm, ss = m.groups()
        days = _DAYS
    elif m := _RFC850.fullmatch(text):
        day, mday, month, yy, hh, mm, ss = m.groups()
        # RFC 9110: a two-digit year more than 50 years in the future is in the past.
        this_year = time.gmtime().tm_year
        year = str(this_year // 100 * 100 + int(yy))
        if int(year) > this_year + 50:
            year = str(int(year) - 100)
        days = _LONG_DAYS
    elif m := _ASCTIME.fullmatch(text):
        day, month, mday, hh, mm, ss, year = m.groups()
        days = _DAYS
    else:
        return None
    if day not in days or month not in _MONTHS:
        return None
    try:
        when = calendar.timegm((int(year), _MONTHS[month], int(mday), int(hh), int(mm),
                                int(ss), 0, 0, 0))  # fmt: skip
    except (ValueError, OverflowError):
        return None
    check = time.gmtime(when)
    if (check.tm_mday, check.tm_hour, check.tm_min, check.tm_sec) != (
        int(mday), int(hh), int(mm), int(ss)
    ):
        return None  # 31 Feb, 25:00 and the like
    return float(when)


def format_http_date(when: float) -> str:
    return email.utils.formatdate(when, usegmt=True)


def cdn_policy(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The headers a CDN's cache decides by (RFC 9213 §2.1): when ``CDN-Cache-Control``
    holds a valid, non-empty value, it stands in for Cache-Control, and Cache-Control and
    Expires are ignored; otherwise the headers as they are. So an origin can give the CDN a
    long life (``CDN-Cache-Control: max-age=86400``) and browsers a short one, and a CDN
    may store what Cache-Control: no-store keeps out of browsers' caches."""
    targeted = header_all(headers, "CDN-Cache-Control")
    if not targeted or not cache_control(targeted):
        return headers
    ignored = ("cache-control", "expires", "cdn-cache-control")
    return [(k, v) for k, v in headers if k.lower() not in ignored] + [("Cache-Control", targeted)]


def freshness_lifetime(status: int, headers: list[tuple[str, str]], shared: bool = True) -> float:
    """RFC 9111 §4.2.1 for a shared cache: s-maxage, then max-age, then Expires − Date,
    then (heuristically cacheable statuses only) 10 % of Date − Last-Modified."""
    cc = cache_control(header_all(headers, "Cache-Control"))
    if shared:
        s_maxage = seconds(cc, "s-maxage")
        if s_maxage is not None:
            return float(s_maxage)
        if cc.get("s-maxage") == "invalid":
            return 0.0
    max_age = seconds(cc, "max-age")
    if max_age is not None:
        return float(max_age)
    if "max-age" in cc:
        return 0.0  # present but malformed: stale (RFC 9111 §4.2.1)
    expires_lines = [v for k, v in headers if k.lower() == "expires"]
    if expires_lines:
        # Several Expires lines are as invalid as a malformed one (§5.3): already expired.
        expires = http_date(expires_lines[0]) if len(expires_lines) == 1 else None
        if expires is None:
            return 0.0  # an invalid Expires means "already expired" (§5.3)
        date = http_date(header(headers, "Date"))
        return max(0.0, expires - (date if date is not None else expires))
    if status in HEURISTIC_STATUSES or "public" in cc:
        modified = http_date(header(headers, "Last-Modified"))
        date = http_date(header(headers, "Date"))
        if modified is not None and date is not None and date > modified:
            return min(HEURISTIC_CAP, (date - modified) * HEURISTIC_FRACTION)
    return 0.0


def has_explicit_freshness(headers: list[tuple[str, str]]) -> bool:
    cc = cache_control(header_all(headers, "Cache-Control"))
    return "s-maxage" in cc or "max-age" in cc or header(headers, "Expires") is not None


INVALID_AGE = 2**31  # RFC 9111 §1.2.2's largest delta-seconds: older than any lifetime


def parse_age(headers: list[tuple[str, str]]) -> int:
    """The Age field (RFC 9111 §5.1): one delta-seconds. Absent is 0. Anything else (a
    list such as "old, 0", several lines, a sign, a fraction, text) cannot be trusted to
    understate the age, so the response is taken as older than any lifetime: stale."""
    lines = [v for k, v in headers if k.lower() == "age"]
    if not lines:
        return 0
    raw = lines[0].strip()
    if len(lines) > 1 or not raw.isdigit():
        return INVALID_AGE
    return min(int(raw), INVALID_AGE)


@dataclass(frozen=True)
class AgeClock:
    """What §4.2.3 needs to compute an entry's age: the response's Date and Age headers,
    and when the request was sent and the response received (local clock)."""

    date: float | None
    age: int
    request_time: float
    response_time: float

    @classmethod
    def of(cls, headers: list[tuple[str, str]], request_time: float, response_time: float):
        return cls(http_date(header(headers, "Date")), parse_age(headers), request_time,
                   response_time)  # fmt: skip

    def current_age(self, now: float) -> float:
        date = self.date if self.date is not None else self.response_time
        apparent_age = max(0.0, self.response_time - date)
        response_delay = self.response_time - self.request_time
        corrected_age_value = self.age + response_delay
        corrected_initial_age = max(apparent_age, corrected_age_value)
        resident_time = now - self.response_time
        return corrected_initial_age + resident_time


def storable(
    method: str,
    status: int,
    request_headers: Mapping[str, str],
    response_headers: list[tuple[str, str]],
) -> bool:
    """RFC 9111 §3 for a shared cache."""
    if method != "GET" or status not in STORABLE_STATUSES:
        return False
    cc = cache_control(header_all(response_headers, "Cache-Control"))
    request_cc = cache_control(request_headers.get("Cache-Control"))
    if "no-store" in cc or "no-store" in request_cc or "private" in cc:
        return False
    if "*" in vary_names(response_headers):  # in any form, on any line (§4.1)
        return False
    if "authorization" in {k.lower() for k in request_headers} and not (
        # §3.5: a shared cache stores an answer to an authorised request only when told to.
        "public" in cc or "s-maxage" in cc or "must-revalidate" in cc
    ):
        return False
    return (
        has_explicit_freshness(response_headers)
        or status in HEURISTIC_STATUSES
        or "public" in cc
        or "no-cache" in cc  # storable, revalidated on every use
    )


def vary_names(headers: list[tuple[str, str]]) -> tuple[str, ...]:
    raw = header_all(headers, "Vary")
    return tuple(sorted({n.strip().lower() for n in raw.split(",") if n.strip()}))


def _normalise(value: str | None) -> str:
    # §4.1: whitespace and case differences that do not change meaning still match.
    return ",".join(p.strip() for p in (value or "").split(",")).lower()


def vary_key(names: tuple[str, ...], request_headers: Mapping[str, str]) -> tuple[str, ...]:
    """The secondary key: the request's values for the headers the response varies on."""
    return tuple(_normalise(request_headers.get(n)) for n in names)


MAX_PATH = 1024


def bad_path(path: str) -> str | None:
    """Why a path cannot name an object, or None. Traversal and control characters are
    refused, not normalised: an object store has no directories to climb out of."""
    plain = path.startswith("/") and len(path) <= MAX_PATH and path.isprintable()
    if plain and "/." not in path and "\\" not in path:
        return None  # the common case, checked cheaply
    if not path.startswith("/") or len(path) > MAX_PATH:
        return "the path must start with '/' and be at most 1024 characters"
    if any(ord(c) < 0x20 or c == "\x7f" for c in path) or "\\" in path:
        return "the path contains control characters or a backslash"
    if any(seg in (".", "..") for seg in path.split("/")):
        return "the path contains '.' or '..' segments"
    return None


# -- conditional requests (RFC 9110 §13) ---------------------------------------------------
def _etags(value: str) -> list[str]:
    return [t.strip() for t in _split_commas(value)]


def _weak_equal(a: str, b: str) -> bool:
    return a.removeprefix("W/") == b.removeprefix("W/")


def not_modified(
    request_headers: Mapping[str, str], etag: str | None, last_modified: str | None
) -> bool:
    """Whether a GET/HEAD with these headers is answered 304 for a representation with this
    ETag and Last-Modified: If-None-Match (weak comparison) wins over If-Modified-Since."""
    inm = request_headers.get("If-None-Match")
    if inm is not None:
        if etag is None:
            return False
        tags = _etags(inm)
        return "*" in tags or any(_weak_equal(t, etag) for t in tags)
    ims = http_date(request_headers.get("If-Modified-Since"))
    if ims is None:
        return False
    modified = http_date(last_modified)
    return modified is not None and modified <= ims


# -- ranges (RFC 9110 §14) ----------------------------------------------------------------
class RangeNotSatisfiable(Exception):
    pass


MAX_RANGES = 16  # more than this is served whole, as nginx's max_ranges bounds them


def byte_ranges(value: str | None, size: int) -> list[tuple[int, int]] | None:
    """Satisfiable (first, last) byte positions of a Range header; ``None`` to serve the
    whole representation (no header, not bytes, malformed: §14.2 says ignore it).
    Raises RangeNotSatisfiable when none is satisfiable (416)."""
    if not value:
        return None
    unit, _, spec = value.partition("=")
    if unit.strip().lower() != "bytes" or not spec.strip():
        return None
    out: list[tuple[int, int]] = []
    for part in spec.split(","):
        part = part.strip()
        first_s, dash, last_s = part.partition("-")
        if not dash:
            return None
        first_s, last_s = first_s.strip(), last_s.strip()
        if first_s == "":
            if not last_s.isdigit():
                return None
            suffix = int(last_s)
            if suffix == 0:
                continue
            out.append((max(0, size - suffix), size - 1))
            continue
        if not first_s.isdigit() or (last_s and not last_s.isdigit()):
            return None
        first = int(first_s)
        if last_s and int(last_s) < first:
            return None  # invalid, so the whole header is ignored
        if first >= size:
            continue  # unsatisfiable, others may be
        out.append((first, min(int(last_s) if last_s else size - 1, size - 1)))
    if len(out) > MAX_RANGES:
        return None
    if not out:
        raise RangeNotSatisfiable
    return out


def if_range_allows(request_headers: Mapping[str, str], etag: str | None, modified: str | None):
    """If-Range (§13.1.5): the range applies only if the validator still matches
    (strong comparison for an ETag, exact date for Last-Modified)."""
    value = request_headers.get("If-Range")
    if value is None:
        return True
    value = value.strip()
    if value.startswith('"') or value.startswith("W/"):
        return etag is not None and not etag.startswith("W/") and value == etag
    return modified is not None and value == modified


# -- answering from a full representation --------------------------------------------------
def _without(headers: list[tuple[str, str]], *names: str) -> list[tuple[str, str]]:
    drop = {n.lower() for n in names}
    return [(k, v) for k, v in headers if k.lower() not in drop]


# Headers a 304 carries (RFC 9110 §15.4.5): the ones a 200 would have had, minus content.
_NOT_IN_304 = ("Content-Length", "Content-Type", "Content-Range", "Content-Encoding")


def answer(
    request_headers: Mapping[str, str],
    status: int,
    headers: list[tuple[str, str]],
    body: bytes,
    boundary: str = "d11-byteranges",
) -> tuple[int, list[tuple[str, str]], bytes]:
    """Serve a full stored (or origin) representation to one request: 304 when its
    conditions say so, 206 (one range, or multipart/byteranges) or 416 for a Range, else
    the representation itself. Only a 200 is ever narrowed."""
    if status != 200:
        return status, headers, body
    etag, modified = header(headers, "ETag"), header(headers, "Last-Modified")
    if not_modified(request_headers, etag, modified):
        return 304, _without(headers, *_NOT_IN_304), b""
    size = len(body)
    headers = [*_without(headers, "Accept-Ranges"), ("Accept-Ranges", "bytes")]
    if "Range" not in request_headers or not if_range_allows(request_headers, etag, modified):
        return 200, headers, body
    try:
        ranges = byte_ranges(request_headers.get("Range"), size)
    except RangeNotSatisfiable:
        rest = _without(headers, "Content-Type", "Content-Length")
        return 416, [*rest, ("Content-Range", f"bytes */{size}")], b""
    if ranges is None:
        return 200, headers, body
    if len(ranges) == 1:
        first, last = ranges[0]
        return (
            206,
            [
                *_without(headers, "Content-Length"),
                ("Content-Range", f"bytes {first}-{last}/{size}"),
            ],
            body[first : last + 1],
        )
    content_type = header(headers, "Content-Type") or "application/octet-stream"
    parts = []
    for first, last in ranges:
        parts.append(
            f"--{boundary}\r\nContent-Type: {content_type}\r\n"
            f"Content-Range: bytes {first}-{last}/{size}\r\n\r\n".encode()
            + body[first : last + 1]
            + b"\r\n"
        )
    parts.append(f"--{boundary}--\r\n".encode())
    rest = _without(headers, "Content-Type", "Content-Length")
    return (
        206,
        [*rest, ("Content-Type", f"multipart/byteranges; boundary={boundary}")],
        b"".join(parts),
    )
