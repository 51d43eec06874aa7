"""Anti-leech URL signing, compatible with two deployed schemes. Pure functions, no I/O.

nginx ``secure_link`` (ngx_http_secure_link_module), with the edge configured as::

    secure_link $arg_md5,$arg_expires;
    secure_link_md5 "$secure_link_expires$uri$remote_addr SECRET";   # remote_addr optional

  ``md5`` is base64url (no padding) of MD5 over that string; ``expires`` is an absolute
  Unix time. A wrong hash is 403, a past expiry 410, as the module's ``$secure_link``
  variable ("" / "0") is used in its documentation.

Alibaba Cloud CDN type A: ``?auth_key={ts}-{rand}-{uid}-{hash}`` where ``hash`` is the hex
  MD5 of ``"{path}-{ts}-{rand}-{uid}-{key}"``; valid until ``ts + ttl``; ``rand`` has no '-'.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import hmac
from urllib.parse import urlencode


class Verdict(enum.Enum):
    VALID = "valid"
    FORGED = "forged"  # missing, malformed or wrong token: 403
    EXPIRED = "expired"  # right token, past its lifetime: 410

    @property
    def http_status(self) -> int:
        return {Verdict.VALID: 200, Verdict.FORGED: 403, Verdict.EXPIRED: 410}[self]


# -- nginx secure_link -----------------------------------------------------------------
def secure_link_hash(expires: int | str, uri: str, secret: str, remote_addr: str = "") -> str:
    text = f"{expires}{uri}{remote_addr} {secret}"
    digest = hashlib.md5(text.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def sign_secure_link(uri: str, expires: int, secret: str, remote_addr: str = "") -> str:
    """The query string to append to ``uri``."""
    md5 = secure_link_hash(expires, uri, secret, remote_addr)
    return urlencode({"md5": md5, "expires": str(expires)})


def verify_secure_link(
    uri: str,
    md5: str | None,
    expires: str | None,
    secret: str,
    now: float,
    remote_addr: str = "",
) -> Verdict:
    """As nginx does: the hash first (403), then the lifetime (410). Without ``expires``
    the link never expires, as in nginx."""
    if not md5:
        return Verdict.FORGED
    if expires is not None and (not expires.isdigit() or len(expires) > 12):
        return Verdict.FORGED
    try:
        given = base64.urlsafe_b64decode(md5 + "=" * (-len(md5) % 4))
    except (binascii.Error, ValueError):
        return Verdict.FORGED
    text = f"{expires or ''}{uri}{remote_addr} {secret}"
    if len(given) != 16 or not hmac.compare_digest(given, hashlib.md5(text.encode()).digest()):
        return Verdict.FORGED
    if expires is not None and int(expires) < now:
        return Verdict.EXPIRED
    return Verdict.VALID


# -- Alibaba Cloud type A ----------------------------------------------------------------
def type_a_hash(path: str, timestamp: int | str, rand: str, uid: str, key: str) -> str:
    return hashlib.md5(f"{path}-{timestamp}-{rand}-{uid}-{key}".encode()).hexdigest()


def sign_type_a(path: str, timestamp: int, key: str, rand: str = "0", uid: str = "0") -> str:
    """The ``auth_key`` value for ``path``."""
    if "-" in rand or "-" in uid:
        raise ValueError("rand and uid must not contain '-'")
    return f"{timestamp}-{rand}-{uid}-{type_a_hash(path, timestamp, rand, uid, key)}"


def verify_type_a(path: str, auth_key: str | None, key: str, ttl: int, now: float) -> Verdict:
    if not auth_key:
        return Verdict.FORGED
    parts = auth_key.split("-")
    if len(parts) != 4 or not parts[0].isdigit() or len(parts[0]) > 12 or len(parts[3]) != 32:
        return Verdict.FORGED
    timestamp, rand, uid, given = parts
    expected = type_a_hash(path, timestamp, rand, uid, key)
    if not hmac.compare_digest(given.lower(), expected):
        return Verdict.FORGED
    if int(timestamp) + ttl < now:
        return Verdict.EXPIRED
    return Verdict.VALID
