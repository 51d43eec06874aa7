"""The order service over ONC RPC, as outside clients see it: Debian's rpcinfo asks the
host's portmapper and calls the program's NULL procedure; calls built by hand with the
standard library's xdrlib (an XDR implementation independent of ours) place and read an
order; every error RFC 5531 defines comes back for the call that earns it."""

from __future__ import annotations

import secrets
import shutil
import socket
import struct
import subprocess
import warnings

import pytest

from tests.conftest import Stack, set_stock

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import xdrlib  # stdlib until 3.13: the independent XDR codec

PROGRAM, VERSION = 0x20001111, 1
ITEM = 25


@pytest.fixture(scope="module")
def host(stack: Stack):
    return stack.topology.host("order-oncrpc")


def rpcinfo(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("rpcinfo") or "/usr/sbin/rpcinfo"
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=20)


def call(host, prog: int, vers: int, proc: int, args: bytes = b"", *, rpcvers: int = 2,
         cred: tuple[int, bytes] = (0, b"")) -> tuple[int, bytes]:  # fmt: skip
    """One call over TCP with record marking; returns (xid, the reply's bytes)."""
    xid = secrets.randbits(32)
    p = xdrlib.Packer()
    for value in (xid, 0, rpcvers, prog, vers, proc):
        p.pack_uint(value)
    p.pack_uint(cred[0])
    p.pack_opaque(cred[1])
    p.pack_uint(0)
    p.pack_opaque(b"")
    message = p.get_buffer() + args
    with socket.create_connection((host.address, host.port), timeout=10) as sock:
        sock.sendall(struct.pack(">I", 0x80000000 | len(message)) + message)
        header = _exactly(sock, 4)
        (mark,) = struct.unpack(">I", header)
        assert mark & 0x80000000, "one fragment expected"
        return xid, _exactly(sock, mark & 0x7FFFFFFF)


def _exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        assert chunk, "connection closed"
        data += chunk
    return data


def accepted(reply: bytes, xid: int) -> xdrlib.Unpacker:
    """The reply's accept_stat and what follows, after checking it answers ``xid``."""
    u = xdrlib.Unpacker(reply)
    assert u.unpack_uint() == xid and u.unpack_uint() == 1  # REPLY
    assert u.unpack_uint() == 0  # MSG_ACCEPTED
    u.unpack_uint()
    u.unpack_opaque()  # the verifier
    return u


def context(p: xdrlib.Packer, traceparent: str = "", timeout_ms: int = 5000) -> None:
    p.pack_string(traceparent.encode())
    p.pack_uint(timeout_ms)


def test_rpcinfo_lists_the_order_program_at_the_portmapper(host):
    listed = rpcinfo("-p", host.address)
    assert listed.returncode == 0, listed.stderr
    rows = [line.split() for line in listed.stdout.splitlines()[1:]]
    assert ["100000", "2", "tcp", "111", "portmapper"] in rows
    assert [str(PROGRAM), "1", "tcp", str(host.port)] in [r[:4] for r in rows]


def test_rpcinfo_calls_the_null_procedure(host):
    ping = rpcinfo("-t", host.address, str(PROGRAM), "1")
    assert ping.returncode == 0 and "ready and waiting" in ping.stdout, ping.stderr
    wrong = rpcinfo("-t", host.address, str(PROGRAM + 1), "1")
    assert wrong.returncode != 0


def test_an_order_placed_and_read_with_an_independent_xdr_codec(stack: Stack, host):
    set_stock(stack, ITEM, 1000)
    key = secrets.token_hex(8)
    p = xdrlib.Packer()
    context(p, "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01")
    p.pack_string(key.encode())
    p.pack_string(b"xdr-user")
    p.pack_uint(1)  # one line: item, quantity, unit price (ignored)
    p.pack_hyper(ITEM)
    p.pack_int(2)
    p.pack_hyper(0)
    p.pack_string(b"")
    xid, reply = call(host, PROGRAM, VERSION, 1, p.get_buffer())
    u = accepted(reply, xid)
    assert u.unpack_uint() == 0  # SUCCESS
    assert u.unpack_int() == 1  # the order arm of order_result
    order_id = u.unpack_string().decode()
    assert u.unpack_string() == b"xdr-user"
    lines = u.unpack_array(lambda: (u.unpack_hyper(), u.unpack_int(), u.unpack_hyper()))
    assert lines[0][:2] == (ITEM, 2) and lines[0][2] > 0  # priced from the catalogue
    u.unpack_string()  # coupon
    assert u.unpack_string() == b"CONFIRMED"
    # GET_ORDER returns it; the same key places nothing new.
    g = xdrlib.Packer()
    context(g)
    g.pack_string(order_id.encode())
    xid, reply = call(host, PROGRAM, VERSION, 2, g.get_buffer())
    u = accepted(reply, xid)
    assert u.unpack_uint() == 0 and u.unpack_int() == 1 and u.unpack_string().decode() == order_id
    xid, reply = call(host, PROGRAM, VERSION, 1, p.get_buffer())
    u = accepted(reply, xid)
    assert u.unpack_uint() == 0 and u.unpack_int() == 1 and u.unpack_string().decode() == order_id


def test_a_domain_error_is_a_result_with_its_code(host):
    g = xdrlib.Packer()
    context(g)
    g.pack_string(b"no-such-order")
    xid, reply = call(host, PROGRAM, VERSION, 2, g.get_buffer())
    u = accepted(reply, xid)
    assert u.unpack_uint() == 0  # the call succeeded; the answer is the error arm
    assert u.unpack_int() == 0 and u.unpack_string() == b"not-found"


@pytest.mark.parametrize(
    ("prog", "vers", "proc", "args", "stat"),
    [
        (PROGRAM + 7, 1, 0, b"", 1),  # PROG_UNAVAIL
        (PROGRAM, 2, 0, b"", 2),  # PROG_MISMATCH
        (PROGRAM, 1, 99, b"", 3),  # PROC_UNAVAIL
        (PROGRAM, 1, 2, b"\x00\x00", 4),  # GARBAGE_ARGS: truncated
        (PROGRAM, 1, 5, b"\x00\x00\x00\x00\x00\x00\x00\x00" + b"\x00" * 8 + b"junk", 4),
    ],
    ids=["prog-unavail", "prog-mismatch", "proc-unavail", "garbage-short", "garbage-trailing"],
)
def test_rfc5531_errors(host, prog, vers, proc, args, stat):
    xid, reply = call(host, prog, vers, proc, args)
    u = accepted(reply, xid)
    assert u.unpack_uint() == stat
    if stat == 2:
        assert (u.unpack_uint(), u.unpack_uint()) == (1, 1)  # the versions served


def test_rpc_version_and_auth_are_checked(host):
    xid, reply = call(host, PROGRAM, VERSION, 0, rpcvers=3)
    u = xdrlib.Unpacker(reply)
    assert (u.unpack_uint(), u.unpack_uint(), u.unpack_uint()) == (xid, 1, 1)  # MSG_DENIED
    assert (u.unpack_uint(), u.unpack_uint(), u.unpack_uint()) == (0, 2, 2)  # RPC_MISMATCH 2..2
    xid, reply = call(host, PROGRAM, VERSION, 0, cred=(3, b"\x00" * 8))  # AUTH_DH: refused
    u = xdrlib.Unpacker(reply)
    assert (u.unpack_uint(), u.unpack_uint(), u.unpack_uint()) == (xid, 1, 1)
    assert u.unpack_uint() == 1  # AUTH_ERROR
    s = xdrlib.Packer()  # AUTH_SYS as Linux's clients send it: accepted
    s.pack_uint(0)
    s.pack_string(b"phone")
    s.pack_uint(1000)
    s.pack_uint(1000)
    s.pack_array([1000], s.pack_uint)
    xid, reply = call(host, PROGRAM, VERSION, 0, cred=(1, s.get_buffer()))
    assert accepted(reply, xid).unpack_uint() == 0


def test_the_order_flows_through_the_controller_over_oncrpc(stack: Stack, http):
    set_stock(stack, ITEM, 1000)
    r = http.post(stack.url("gateway", "/api/orders"),
                  json={"user_id": "onc", "lines": [{"item_id": ITEM, "quantity": 1}]},
                  headers={"Idempotency-Key": secrets.token_hex(8),
                           "X-Order-Protocol": "oncrpc"})  # fmt: skip
    assert r.status_code == 201, r.text
    back = http.get(stack.url("gateway", f"/api/orders/{r.json()['order_id']}"),
                    headers={"X-Order-Protocol": "oncrpc"})  # fmt: skip
    assert back.json()["status"] == "CONFIRMED"
