"""The BGP routers' configuration (Docker mode's border and ISP routers, infra/router.py):
BIRD itself parses what we render (``bird -p``), and the topology's announcements agree
with the address plan."""

from __future__ import annotations

import ipaddress
import shutil
import subprocess

import pytest

from infra import router
from infra import topology as topo

T = topo.load(mode="docker")
ROUTERS = T.by_role("router")


def rendered(host: topo.Host) -> str:
    env = T.environment(host)
    return router.config(
        int(env["D11_BGP_ASN"]), host.address, router.neighbors(env["D11_BGP_NEIGHBORS"]),
        env["D11_BGP_ORIGINATE"].split(","), env.get("D11_BGP_TRANSIT") == "1",
    )  # fmt: skip


@pytest.mark.parametrize("host", ROUTERS, ids=[h.name for h in ROUTERS])
def test_bird_parses_each_routers_configuration(host: topo.Host, tmp_path) -> None:
    if not shutil.which("bird"):
        pytest.fail("BIRD is missing: apt-get install bird2")
    path = tmp_path / "bird.conf"
    path.write_text(rendered(host))
    result = subprocess.run(["bird", "-p", "-c", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    # A broken file must fail the same check (so the check above means something).
    path.write_text(rendered(host).replace("local as", "local ass"))
    broken = subprocess.run(["bird", "-p", "-c", str(path)], capture_output=True, text=True)
    assert broken.returncode != 0


def test_sessions_pair_up_and_asns_are_private() -> None:
    """Every session is configured on both ends with the other's ASN (eBGP), every ASN is
    a private one (RFC 6996), and a border announces only its own edge network."""
    asn = {h.name: int(T.environment(h)["D11_BGP_ASN"]) for h in ROUTERS}
    assert all(64512 <= a <= 65534 for a in asn.values()), asn
    assert len(set(asn.values())) == len(asn)
    for h in ROUTERS:
        for peer in router.neighbors(T.environment(h)["D11_BGP_NEIGHBORS"]):
            assert peer.asn == asn[peer.name] and peer.address == T.host(peer.name).address
            back = router.neighbors(T.environment(T.host(peer.name))["D11_BGP_NEIGHBORS"])
            assert any(b.name == h.name and b.asn == asn[h.name] for b in back), (h, peer)
        if h.site:
            (edge,) = [n for n in h.addresses if n.startswith("edge-")]
            assert T.environment(h)["D11_BGP_ORIGINATE"] == T.networks[edge]["subnet"]


def test_each_isp_announces_its_own_phones() -> None:
    """An ISP router originates exactly its customers' phone blocks (docker.phone.places),
    the uplink ISP the access network's shared hosts as well; what lies behind the routers
    (``routed``) covers the peering LAN and every site's edge, and none of it overlaps the
    access network."""
    bgp = T.docker["bgp"]
    places = T.docker["phone"]["places"]
    shared = ipaddress.IPv4Network(T.networks["internet"]["subnet"])
    for isp, name in bgp["isps"].items():
        announced = set(T.environment(T.host(name))["D11_BGP_ORIGINATE"].split(","))
        blocks = {b for p, b in places.items() if p.split("/")[0] == isp}
        extra = announced - blocks
        assert blocks <= announced, (isp, announced)
        assert all(ipaddress.IPv4Network(e).subnet_of(shared) for e in extra), extra
        assert not extra or name == bgp["uplink"], (isp, extra)
    routed = ipaddress.IPv4Network(bgp["routed"])
    for net, spec in T.networks.items():
        subnet = ipaddress.IPv4Network(spec["subnet"])
        if net == "ix" or net.startswith("edge-"):
            assert subnet.subnet_of(routed), net
        else:
            assert not subnet.overlaps(routed), net
