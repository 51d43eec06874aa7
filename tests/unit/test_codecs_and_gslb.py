"""Pure codecs and choices as tables: Hessian 2 against the bytes Caucho's Java writes, our
XDR against the standard library's xdrlib, RPC v2 messages and record marking, and the
GSLB's choice (IP database, regions, health, weights, scope) with no DNS server running."""

from __future__ import annotations

import ipaddress
import random
import struct
import warnings

import pytest

from dns.gslb import Gslb, IpDatabase, Place
from rpc.dubbo import hessian2
from rpc.oncrpc import message, xdr

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import xdrlib


# -- Hessian 2: the bytes Caucho's Hessian2Output writes (shared/DESIGN.md, interop tests) --
@pytest.mark.parametrize(
    ("value", "wire"),
    [
        (0, "90"),
        (47, "bf"),
        (-16, "80"),
        (48, "c8 30"),
        (True, "54"),
        (None, "4e"),
        ("hi", "02 68 69"),
        (1.5, "5f 00 00 05 dc"),
        ([1, 2], "7a 91 92"),
    ],
)
def test_hessian2_writes_what_caucho_writes(value, wire):
    assert hessian2.dumps(value).hex(" ") == wire
    assert hessian2.loads(bytes.fromhex(wire)) == value


@pytest.mark.parametrize(
    "data", ["", "79" * 100 + "90", "43 01 61 90" * 2000 + "60", "ff", "52 00 05"],
    ids=["empty", "deep", "chained-definitions", "bad-tag", "truncated"],
)  # fmt: skip
def test_hessian2_refuses_bad_input_with_its_own_error(data):
    with pytest.raises(hessian2.HessianError):
        hessian2.loads(bytes.fromhex(data.replace(" ", "")))


# -- XDR against xdrlib ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        (lambda p: p.int(-2), lambda p: p.pack_int(-2)),
        (lambda p: p.uint(2**32 - 1), lambda p: p.pack_uint(2**32 - 1)),
        (lambda p: p.hyper(-(2**40)), lambda p: p.pack_hyper(-(2**40))),
        (lambda p: p.bool(True), lambda p: p.pack_bool(True)),
        (lambda p: p.string("order"), lambda p: p.pack_string(b"order")),
        (lambda p: p.opaque(b"\x01\x02\x03\x04\x05"), lambda p: p.pack_opaque(b"\x01\x02\x03\x04\x05")),  # noqa: E501
        (lambda p: p.array([1, 2, 3], p.uint), lambda p: p.pack_array([1, 2, 3], p.pack_uint)),
    ],
)  # fmt: skip
def test_xdr_is_byte_for_byte_xdrlib(ours, theirs):
    mine, std = xdr.Packer(), xdrlib.Packer()
    ours(mine)
    theirs(std)
    assert mine.bytes() == std.get_buffer()


@pytest.mark.parametrize(
    ("data", "read"),
    [
        (b"\x00\x00", lambda u: u.int()),  # short
        (b"\x00\x00\x00\x02", lambda u: u.bool()),  # a bool is 0 or 1
        (b"\x00\x00\x00\x01a\x00\x00\x01", lambda u: u.string()),  # non-zero padding
        (b"\x00\x00\x01\x00", lambda u: u.opaque(limit=8)),  # over the limit
        (b"\x00\x00\x00\x01\xff\x00\x00\x00", lambda u: u.string()),  # not UTF-8
    ],
)
def test_xdr_refuses_what_is_not_xdr(data, read):
    with pytest.raises(xdr.XdrError):
        read(xdr.Unpacker(data))


def test_rpc_call_and_reply_round_trip_and_record_marking():
    call = message.Call(7, 0x20001111, 1, 2, message.AuthSys(machine="m", uid=5).auth(),
                        args=b"\x00\x00\x00\x01")  # fmt: skip
    parsed = message.parse_call(call.pack())
    assert parsed == call and message.AuthSys.parse(parsed.cred.body).uid == 5
    for reply in (message.Reply(7, body=b"ok!!"),
                  message.Reply(7, message.AcceptStat.PROG_MISMATCH, low=1, high=3),
                  message.Reply(7, reject=message.RejectStat.RPC_MISMATCH, low=2, high=2),
                  message.Reply(7, reject=message.RejectStat.AUTH_ERROR, auth=1)):  # fmt: skip
        assert message.parse_reply(reply.pack()) == reply
    record = b"x" * 10
    marked = message.mark(record, fragment=4)  # three fragments, the last one marked
    assert struct.unpack(">I", marked[:4])[0] == 4 and marked[-6:-2] == struct.pack(
        ">I", 0x80000002
    )
    reader = message.RecordReader(limit=64)
    assert [r for i in range(len(marked)) for r in reader.feed(marked[i : i + 1])] == [record]
    with pytest.raises(message.RpcError):
        message.RecordReader(limit=8).feed(marked)


# -- the GSLB's choice -----------------------------------------------------------------------
def _gslb(backup: int = 0) -> Gslb:
    ipdb = IpDatabase([Place(ipaddress.ip_network("10.1.0.0/16"), "telecom", "east"),
                       Place(ipaddress.ip_network("10.2.0.0/16"), "unicom", "north")])  # fmt: skip
    policy = {
        "ttl": 20,
        "default": {"isp": "telecom", "region": "east"},
        "nearest": {"east": ["east", "north"], "north": ["north", "east"]},
        "services": [{
            "name": "api.x.", "kind": "two-layer", "layer2": "api.{isp}.gslb.x.", "answers": 2,
            "backup": backup,
            "entries": {"telecom": {"east": [{"address": "1.0.0.1", "weight": 3},
                                             {"address": "1.0.0.2", "weight": 1}],
                                    "north": [{"address": "1.0.0.3"}]},
                        "unicom": {"north": [{"address": "1.0.0.4"}]}},
        }],
    }  # fmt: skip
    return Gslb(policy, ipdb, random.Random(11))


@pytest.mark.parametrize(
    ("client", "subnet", "expected"),
    [
        ("10.1.2.3", None, ("telecom", "east", 0)),
        ("8.8.8.8", ("10.2.7.0", 24), ("unicom", "north", 16)),  # ECS wins, SCOPE = /16
        ("8.8.8.8", None, ("telecom", "east", 0)),  # unknown: the default
        ("8.8.8.8", ("192.0.2.0", 24), ("telecom", "east", 24)),  # unknown subnet: its own /24
    ],
)
def test_where_a_querier_is(client, subnet, expected):
    assert _gslb().where(client, subnet) == expected


def test_layer_two_answers_by_weight_and_leaves_the_dead_out():
    from dnslib import QTYPE, DNSLabel

    gslb = _gslb()
    first = [str(gslb.answer(DNSLabel("api.telecom.gslb.x."), QTYPE.A, "10.1.0.1", None)
                 .records[0].rdata) for _ in range(400)]  # fmt: skip
    assert 0.65 < first.count("1.0.0.1") / 400 < 0.85  # weight 3 of 4
    for t in gslb.targets:
        if t.address in ("1.0.0.1", "1.0.0.2"):
            t.healthy = False
    answer = gslb.answer(DNSLabel("api.telecom.gslb.x."), QTYPE.A, "10.1.0.1", None)
    assert [str(r.rdata) for r in answer.records] == ["1.0.0.3"]  # the nearest region's
    for t in gslb.targets:
        t.healthy = False
    assert gslb.answer(DNSLabel("api.telecom.gslb.x."), QTYPE.A, "10.1.0.1", None).servfail


def test_the_backup_is_the_other_sites_and_comes_last():
    from dnslib import QTYPE, DNSLabel

    gslb = _gslb(backup=1)

    def ask() -> list[str]:
        found = gslb.answer(DNSLabel("api.telecom.gslb.x."), QTYPE.A, "10.1.0.1", None)
        return [str(r.rdata) for r in found.records]

    for _ in range(20):
        got = ask()
        assert sorted(got[:2]) == ["1.0.0.1", "1.0.0.2"] and got[2:] == ["1.0.0.3"], got
    north = gslb.answer(DNSLabel("api.telecom.gslb.x."), QTYPE.A, "10.2.0.1", None)
    assert next(str(r.rdata) for r in north.records) == "1.0.0.3"
    # The other site dead: no backup, never a dead one.
    next(t for t in gslb.targets if t.address == "1.0.0.3").healthy = False
    assert sorted(ask()) == ["1.0.0.1", "1.0.0.2"]
    # The region's own site dead: the next region answers, and has nothing after it.
    for t in gslb.targets:
        t.healthy = t.address == "1.0.0.3"
    assert ask() == ["1.0.0.3"]
