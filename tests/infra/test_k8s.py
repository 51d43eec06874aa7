"""Kubernetes manifests rendered from the topology (``./d11 k8s``): up to date, valid
against a current Kubernetes release's schemas, and saying what the lab needs. No cluster
runs on this machine kind, so this is the proof: kubectl renders the Kustomize base, and
kubernetes-validate checks every object."""

from __future__ import annotations

import copy
import ipaddress
import re
import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from infra import ROOT
from infra.k8s import BASE_DIR, ENTRY_IP, NAMESPACE
from tests.conftest import d11


def objects() -> list[dict]:
    out = []
    for path in sorted(BASE_DIR.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            out.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return out


def by_kind(kind: str) -> dict[str, dict]:
    return {o["metadata"]["name"]: o for o in objects() if o["kind"] == kind}


def workloads() -> dict[str, dict]:
    return {**by_kind("Deployment"), **by_kind("StatefulSet")}


def test_rendered_manifests_are_up_to_date():
    d11("k8s", "--check")


def test_every_object_is_valid_for_a_current_kubernetes_release():
    version = kubernetes_validate.latest_version()
    assert version >= "1.30"
    found = objects()
    assert len(found) > 40
    for obj in found:
        kubernetes_validate.validate(obj, version, strict=True)
    # The check bites: a Deployment with a mistyped field or a wrong type fails.
    broken = copy.deepcopy(by_kind("Deployment")["controller"])
    broken["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, version, strict=True)
    broken = copy.deepcopy(by_kind("Deployment")["controller"])
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, version, strict=True)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (Debian: kubernetes-client)")
def test_kubectl_kustomize_renders_the_base_into_the_namespace():
    out = subprocess.run(["kubectl", "kustomize", str(BASE_DIR)], capture_output=True,
                         text=True, timeout=60, check=True).stdout  # fmt: skip
    rendered = [d for d in yaml.safe_load_all(out) if d]
    assert len(rendered) == len(objects())
    for obj in rendered:
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == NAMESPACE, obj["metadata"]["name"]
        assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "double-11"


def test_replicas_stores_and_probes_are_what_the_lab_needs():
    loads = workloads()
    # Instances that differ only by name became replicas of one workload.
    for name in ("controller", "gateway", "order-grpc", "order-soap", "order-dubbo",
                 "order-oncrpc", "dns-root", "dns-tld"):  # fmt: skip
        assert loads[name]["spec"]["replicas"] == 2, name
    # The stores keep one writer, with a volume of their own.
    for name in ("inventory", "coupon"):
        store = by_kind("StatefulSet")[name]
        assert store["spec"]["replicas"] == 1
        assert store["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    claims = by_kind("PersistentVolumeClaim")
    assert claims["orders"]["spec"]["accessModes"] == ["ReadWriteMany"]
    for name, load in loads.items():
        pod = load["spec"]["template"]["spec"]
        (box,) = pod["containers"]
        assert box["readinessProbe"] and box["livenessProbe"], name
        assert pod["securityContext"]["runAsNonRoot"] is True
        caps = box["securityContext"]["capabilities"]
        assert caps == {"drop": ["ALL"]}, f"{name}: no pod sets up networking here"
        if name.startswith("order-"):
            assert {"name": "orders", "persistentVolumeClaim": {"claimName": "orders"}} in pod[
                "volumes"]  # fmt: skip
    grpc = loads["order-grpc"]["spec"]["template"]["spec"]["containers"][0]
    assert grpc["readinessProbe"]["grpc"] == {"port": 50051}


def test_tenant_b_is_kept_out_of_the_shops_vpc():
    policies = by_kind("NetworkPolicy")
    shop, tenant = policies["vpc-shop"]["spec"], policies["vpc-tenant-b"]["spec"]
    assert shop["ingress"] == [{"from": [{"podSelector": {"matchLabels": {
        "d11.example/tenant": "shop"}}}]}]  # fmt: skip
    assert tenant["ingress"] == [{"from": [{"podSelector": {"matchLabels": {
        "d11.example/tenant": "tenant-b"}}}]}]  # fmt: skip
    labels = {n: w["spec"]["template"]["metadata"]["labels"] for n, w in workloads().items()}
    assert labels["tenant-b-inventory"]["d11.example/tenant"] == "tenant-b"
    assert labels["inventory"]["d11.example/tenant"] == "shop"

    def selects(spec: dict, pod: dict[str, str]) -> bool:
        return all((pod.get(e["key"]) in e["values"]) == (e["operator"] == "In")
                   for e in spec["podSelector"]["matchExpressions"])  # fmt: skip

    assert selects(shop, labels["inventory"]) and not selects(shop, labels["tenant-b-inventory"])
    assert selects(tenant, labels["tenant-b-inventory"])
    # Both VPCs use one subnet; the cluster has one Service network: the shop's controllers
    # reach the shop's inventory, never tenant B's.
    services = by_kind("Service")
    env = {e["name"]: e.get("value") for e in workloads()["controller"]["spec"]["template"][
        "spec"]["containers"][0]["env"]}  # fmt: skip
    shop_ip = services["inventory"]["spec"]["clusterIP"]
    assert shop_ip != services["tenant-b-inventory"]["spec"]["clusterIP"]
    assert env["D11_INVENTORY"] == f"{shop_ip}:50061"


def test_every_address_is_a_service_of_the_cluster():
    text = "".join(p.read_text() for p in BASE_DIR.glob("*.yaml"))
    assert not re.search(r"\b198\.(18|19)\.\d+\.\d+", text), "a Docker-mode address is left"
    services = by_kind("Service")
    ips = {s["spec"]["clusterIP"] for s in services.values()}
    assert services["entry"]["spec"]["type"] == "LoadBalancer"
    assert ENTRY_IP in ips and len(ips) == len(services), "one fixed ClusterIP per Service"
    assert all(ipaddress.IPv4Address(ip) in ipaddress.IPv4Network("10.96.0.0/12") for ip in ips)
    for name, load in workloads().items():
        for env in load["spec"]["template"]["spec"]["containers"][0]["env"]:
            for ip in re.findall(r"\b10\.9[0-9]\.\d+\.\d+", env.get("value", "")):
                assert ip in ips, f"{name}: {env['name']} names {ip}, no Service's"
    # The zones answer with the Services' addresses: the shop's API name is the entry.
    zones = by_kind("ConfigMap")["d11-zones"]["data"]
    assert ENTRY_IP in zones["shop.example.zone"] or ENTRY_IP in "".join(
        by_kind("ConfigMap")["d11-gslb"]["data"].values())  # fmt: skip


def test_the_k8s_folder_says_what_was_and_was_not_run():
    readme = (ROOT / "k8s" / "README.md").read_text()
    assert "kubectl kustomize" in readme and "kubernetes-validate" in readme
    assert "not run" in readme.lower()
    assert Path(BASE_DIR / "kustomization.yaml").exists()
