"""cdn/semantics.py, table by table: what RFC 9111, RFC 9110's date grammar and RFC 9213
ask of a shared cache, with no server started. Rows follow the cases of the HTTP caching
test suite (cache-tests) where it has them."""

from __future__ import annotations

import time

import pytest

from cdn import semantics as sem

FUTURE = "Thu, 18 Aug 2050 02:01:18 GMT"


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        (FUTURE, True),
        ("Tue, 19 Jan 2038 14:14:08 GMT", True),  # exactly 32 bits
        ("Sun, 21 Nov 2286 04:46:39 GMT", True),  # far in the future
        ("Thursday, 18-Aug-50 02:01:18 GMT", True),  # obsolete RFC 850
        ("Thu Aug  8 02:01:18 2050", True),  # asctime()
        ("THU, 18 Aug 2050 02:01:18 GMT", True),  # names in another case
        ("Thu, 18 AUG 2050 02:01:18 GMT", True),
        ("Thu, 18 Aug 2050 02:01:18 gMT", True),
        ("Thu, 18 Aug 2050 02:01:18 UTC", False),  # another time zone
        ("Thu, 18 Aug 2050 02:01:18 AEST", False),
        ("Thu, 18 Aug 50 02:01:18 GMT", False),  # two-digit year outside RFC 850
        ("Thu 18 Aug 2050 02:01:18 GMT", False),  # no comma
        ("Thu, 18  Aug  2050 02:01:18 GMT", False),  # extra spaces
        ("Thu, 18-Aug-2050 02:01:18 GMT", False),  # dashes
        ("Thu, 18 Aug 2050 02.01.18 GMT", False),  # periods in the time
        ("Thu, 18 Aug 2050 2:01:18 GMT", False),  # one-digit hour
        ("Thu, 31 Feb 2050 02:01:18 GMT", False),  # no such day
        ("Foo, 18 Aug 2050 02:01:18 GMT", False),
        ("0", False),
        ("", False),
    ],
)
def test_http_date_grammar(value, valid):
    assert (sem.http_date(value) is not None) is valid


def test_rfc850_two_digit_years_are_within_fifty_years():
    this_year = time.gmtime().tm_year
    stamp = sem.http_date("Sunday, 06-Nov-94 08:49:37 GMT")
    assert stamp == sem.http_date("Sun, 06 Nov 1994 08:49:37 GMT")
    assert time.gmtime(stamp).tm_year <= this_year + 50


def _headers(*lines: str) -> list[tuple[str, str]]:
    return [tuple(part.strip() for part in line.split(":", 1)) for line in lines]  # type: ignore[misc]


DATE = "Date: Mon, 01 Jan 2046 00:00:00 GMT"


@pytest.mark.parametrize(
    ("lines", "lifetime"),
    [
        ((DATE, "Expires: Mon, 01 Jan 2046 00:01:00 GMT"), 60),
        ((DATE, "Expires: Mon, 01 Jan 2046 00:01:00 UTC"), 0),
        ((DATE, "Expires: Mon, 01 Jan 46 00:01:00 GMT"), 0),
        ((DATE, "Expires: Mon 01 Jan 2046 00:01:00 GMT"), 0),
        ((DATE, "Expires: Mon, 01  Jan 2046 00:01:00 GMT"), 0),
        ((DATE, "Expires: Mon, 01-Jan-2046 00:01:00 GMT"), 0),
        ((DATE, "Expires: Mon, 01 Jan 2046 00.01.00 GMT"), 0),
        ((DATE, "Expires: Mon, 01 Jan 2046 0:01:00 GMT"), 0),
        (
            (
                DATE,
                "Expires: Mon, 01 Jan 2046 00:01:00 GMT",
                "Expires: Mon, 01 Jan 2046 00:01:00 GMT",
            ),
            0,
        ),
        ((DATE, "Expires: 0"), 0),
        ((DATE, "Cache-Control: max-age=30", "Expires: Mon, 01 Jan 2046 00:01:00 GMT"), 30),
        ((DATE, "Cache-Control: max-age=30, s-maxage=90"), 90),
        (("Cache-Control: max-age=30, max-age=90",), 0),  # duplicated: invalid
    ],
)
def test_freshness_lifetime(lines, lifetime):
    assert sem.freshness_lifetime(200, _headers(*lines)) == lifetime


@pytest.mark.parametrize(
    ("lines", "age"),
    [
        ((), 0),
        (("Age: 0",), 0),
        (("Age: 7200",), 7200),
        (("Age: old, 0",), sem.INVALID_AGE),
        (("Age: 7200, 0",), sem.INVALID_AGE),
        (("Age: 0, 7200",), sem.INVALID_AGE),
        (("Age: 0", "Age: 7200"), sem.INVALID_AGE),
        (("Age: abc",), sem.INVALID_AGE),
        (("Age: -7200",), sem.INVALID_AGE),
        (("Age: 7200.0",), sem.INVALID_AGE),
        (("Age: 99999999999",), sem.INVALID_AGE),
    ],
)
def test_age_is_one_delta_seconds_or_the_response_is_stale(lines, age):
    assert sem.parse_age(_headers(*lines)) == age
    clock = sem.AgeClock.of(_headers("Cache-Control: max-age=3600", *lines), 1000.0, 1000.0)
    stale = clock.current_age(1000.0) >= 3600
    assert stale is (age >= 3600)


@pytest.mark.parametrize(
    ("lines", "stored"),
    [
        (("Cache-Control: max-age=60",), True),
        (("Cache-Control: max-age=60", "Vary: Accept-Language"), True),
        (("Cache-Control: max-age=60", "Vary: *"), False),
        (("Cache-Control: max-age=60", "Vary: *, *"), False),
        (("Cache-Control: max-age=60", "Vary: , *"), False),
        (("Cache-Control: max-age=60", "Vary: *, Foo"), False),
        (("Cache-Control: max-age=60", "Vary: Foo, *"), False),
        (("Cache-Control: max-age=60", "Vary: Foo", "Vary: *"), False),
        (("Cache-Control: no-store",), False),
        (("Cache-Control: private, max-age=60",), False),
        # RFC 9213: the CDN's own field decides for the CDN.
        (("Cache-Control: no-store", "CDN-Cache-Control: max-age=60"), True),
        (("Cache-Control: max-age=60", "CDN-Cache-Control: private"), False),
        (("Cache-Control: max-age=60", "CDN-Cache-Control: no-store"), False),
    ],
)
def test_storable_by_a_shared_cache(lines, stored):
    headers = sem.cdn_policy(_headers(*lines))
    assert sem.storable("GET", 200, {}, headers) is stored


@pytest.mark.parametrize(
    ("lines", "lifetime"),
    [
        (("Cache-Control: max-age=3600", "CDN-Cache-Control: max-age=60"), 60),
        (("Cache-Control: max-age=60", "CDN-Cache-Control: max-age=3600"), 3600),
        ((DATE, "Expires: Mon, 01 Jan 2046 01:00:00 GMT", "CDN-Cache-Control: max-age=5"), 5),
        (("Cache-Control: max-age=60", "CDN-Cache-Control: ,,"), 60),  # invalid: ignored
        (("Cache-Control: s-maxage=120", "CDN-Cache-Control: no-cache"), 0),
    ],
)
def test_cdn_cache_control_wins_over_cache_control(lines, lifetime):
    assert sem.freshness_lifetime(200, sem.cdn_policy(_headers(*lines))) == lifetime


def test_connection_listed_headers():
    headers = _headers("Connection: close, X-Secret", "Connection: X-Other")
    assert sem.connection_listed(headers) == {"close", "x-secret", "x-other"}


@pytest.mark.parametrize(
    ("value", "target"),
    [
        ("/b", "/b"),
        ("http://img.example/b?x=1", "/b?x=1"),
        ("HTTP://IMG.EXAMPLE/b", "/b"),
        ("c", "/a/c"),  # relative to the request's path
        ("http://other.example/b", None),  # another host: not invalidated
        ("ftp://img.example/b", None),
        ("", None),
        (None, None),
    ],
)
def test_location_targets_on_the_same_host(value, target):
    assert sem.same_origin_target(value, "img.example", "/a/x") == target
