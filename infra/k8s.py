"""Kubernetes, rendered from the topology: a Kustomize base in ``k8s/base``.

``./d11 k8s`` writes it, ``./d11 k8s --check`` fails when a committed file differs from
what the topology gives (a test runs it, and validates every object against the schemas
of a current Kubernetes release). ``kubectl apply -k k8s/base`` deploys it.

How the lab's hops map onto a cluster (k8s/README.md says more):

* Hosts that differ only by name and address (``controller-1``/``-2``, ``gateway``/
  ``gateway-2``, the second name server of each zone, each order wire's second instance)
  become one Deployment with that many replicas, behind one Service.
* Every Service has a fixed ClusterIP in the kubeadm/kind default range (10.96.0.0/12), so
  the lab's DNS data, which names addresses, is translated once: Docker-mode addresses
  become ClusterIPs in the zone files, GSLB policies and settings (ConfigMaps).
* The stores keep one writer: inventory and coupon are StatefulSets with a volume each;
  the order wires share the order store on one ReadWriteMany claim, as they share a
  volume in Compose.
* The cluster's CNI is the overlay (Flannel's VXLAN backend is the lab's VXLAN), and a
  NetworkPolicy is the VPC's isolation: tenant B's pods cannot reach the shop's VPC.
  So no pod sets up networking and none gets NET_ADMIN.
* The NAT entry is a LoadBalancer Service in front of the gateways; the phones stay
  outside the cluster.
"""

from __future__ import annotations

import ipaddress
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from infra import ROOT, render_command
from infra import topology as topo
from infra.compose import DOCKER_DIR, environment
from infra.topology import Host, Topology

BASE_DIR = ROOT / "k8s" / "base"
NAMESPACE = "double-11"
IMAGE = "double-11:latest"
PKI_DIR = "/var/lib/d11/pki"
# kubeadm's and kind's default Service range; the lab's addresses move into it:
# 198.19.x.y (the internet) → 10.97.x.y, 198.18.x.y (underlay, VPCs) → 10.98.x.y.
SERVICE_NET = ipaddress.IPv4Network("10.96.0.0/12")
ENTRY_IP = "10.97.0.10"  # the LoadBalancer in front of the gateways: the NAT's part
# Hosts Kubernetes plays itself: the NAT (a LoadBalancer Service) and the phones (outside).
NOT_IN_CLUSTER = topo.APPLIANCES
LABEL = "d11.example"
HEADER = """\
# RENDERED by `./d11 k8s` from infra/topology.yaml: edit that file, not this one (a test
# fails when the two disagree). See k8s/README.md.
"""
_LAB_ADDRESS = re.compile(r"(?<![\d.])198\.(?:18|19)\.\d{1,3}\.\d{1,3}(?![\d.])")


@dataclass
class Workload:
    """One Deployment or StatefulSet (and its Service): the hosts it stands for."""

    name: str
    hosts: list[Host]
    env: dict[str, str]
    tenant: str = "shop"  # whose VPC its pods are in (the shop's for hosts outside any)

    @property
    def first(self) -> Host:
        return self.hosts[0]

    @property
    def stateful(self) -> bool:
        return self.first.role in ("inventory", "coupon")

    def ip(self, t: Topology) -> str:
        vpc = self.first.vpc
        return cluster_ip(self.first.address, list(t.vpcs).index(vpc[0]) if vpc else 0)


def cluster_ip(address: str, shift: int = 0) -> str:
    """``shift``: the VPC's place in the topology. VPCs may reuse one subnet (tenant B's
    inventory is 198.18.100.41 in its VPC, as the shop's is in its own), but a cluster
    has one Service network: each further VPC moves up one (10.99.x.y, …)."""
    a = ipaddress.IPv4Address(address).packed
    second = {19: 97, 18: 98}[a[1]] + shift
    ip = ipaddress.IPv4Address(f"10.{second}.{a[2]}.{a[3]}")
    assert ip in SERVICE_NET
    return str(ip)


def _shape(t: Topology, host: Host) -> tuple[Any, ...]:
    """What makes two hosts the same workload: all but the name, addresses and placement
    (the AZ, and so its VXLAN segment: the cluster's CNI plays the overlay)."""
    env = {k: v for k, v in environment(t, host).items()
           if k not in ("D11_SERVICE", "OTEL_SERVICE_NAME", "D11_ADDRESS", "D11_PUBLIC_ADDRESS",
                        "D11_ADDRESS_ALIASES", "D11_AZ", "D11_VNI")}  # fmt: skip
    return (host.role, host.module, host.port, host.vpc and host.vpc[0], tuple(host.volumes),
            tuple(sorted(env.items())))  # fmt: skip


def workloads(t: Topology) -> list[Workload]:
    groups: dict[tuple[Any, ...], list[Host]] = {}
    for host in t.hosts:
        if host.role not in NOT_IN_CLUSTER:
            groups.setdefault(_shape(t, host), []).append(host)
    out = []
    for hosts in groups.values():
        name = hosts[0].role if len(hosts) > 1 else hosts[0].name
        if len(hosts) > 1 and hosts[0].site and hosts[0].site != t.main_site:
            name = f"{name}-{hosts[0].site}"  # the north's gateways beside the east's
        vpc = hosts[0].vpc
        out.append(Workload(name, hosts, {}, t.tenant_of(vpc[0]) if vpc else "shop"))
    table = addresses(t, out)
    for w in out:
        env = environment(t, w.first)
        env.pop("D11_ADDRESS_ALIASES", None)
        env.pop("D11_VNI", None)  # the CNI is the overlay: no VXLAN device in the pod
        env.pop("D11_AZ", None)  # the node's zone label; replicas are spread over zones
        env.update(D11_SERVICE=w.name, OTEL_SERVICE_NAME=w.name)
        if "D11_PUBLIC_ADDRESS" in env:
            env["D11_PUBLIC_ADDRESS"] = ENTRY_IP
        w.env = {k: setting(v, table) for k, v in env.items()
                 if k != "D11_ADDRESS"}  # fmt: skip
    return out


def addresses(t: Topology, loads: list[Workload]) -> dict[str, str]:
    """Every Docker-mode address of the lab → the ClusterIP that now answers for it."""
    table: dict[str, str] = {}
    for w in sorted(loads, key=lambda w: w.ip(t)):  # the first VPC's hosts own its addresses
        ip = w.ip(t)
        for host in w.hosts:
            for address in host.addresses.values():
                table[address] = ip
            if host.vpc is not None:
                table.setdefault(host.vpc[1], ip)
    # The public entry addresses the NAT held (the GSLB's answers) are the LoadBalancer's.
    for nat in t.by_role("nat"):
        for address in nat.addresses.values():
            table.setdefault(address, ENTRY_IP)
    for value in str(t.by_role("nat")[0].env.get("D11_NAT_FORWARD", "")).split(","):
        public = value.split(":", 1)[0]
        if public:
            table.setdefault(public, ENTRY_IP)
    return table


def translate(text: str, table: dict[str, str]) -> str:
    """Lab addresses in ``text`` → the ClusterIPs answering for them; one no workload
    holds (the zone's deliberately missing server) moves by the same rule, to nowhere."""
    return _LAB_ADDRESS.sub(lambda m: table.get(m.group(0)) or cluster_ip(m.group(0)), text)


def setting(value: str, table: dict[str, str]) -> str:
    """A setting translated; a list of endpoints whose instances became one Service (two
    controllers behind one ClusterIP) names that Service once."""
    items = translate(value, table).split(",")
    return ",".join(dict.fromkeys(items))


# -- objects ----------------------------------------------------------------------------
def labels(w: Workload) -> dict[str, str]:
    return {"app.kubernetes.io/name": w.name, "app.kubernetes.io/part-of": "double-11",
            f"{LABEL}/role": w.first.role, f"{LABEL}/tenant": w.tenant}  # fmt: skip


def probe(w: Workload) -> dict[str, Any]:
    host = w.first
    if host.protocol == "grpc":
        action: dict[str, Any] = {"grpc": {"port": host.port}}
    elif host.protocol == "http":
        action = {"httpGet": {"path": "/healthz", "port": host.port}}
    else:  # DNS over UDP, Dubbo and ONC RPC: the container's own check (compose.yaml's)
        action = {"exec": {"command": ["python", "-S", "infra/healthcheck.py", host.protocol]}}
    return action


def ports(w: Workload) -> list[dict[str, Any]]:
    host = w.first
    protocols = ["UDP", "TCP"] if host.protocol == "dns" else ["TCP"]
    out = [{"name": f"{host.protocol[:10]}-{p.lower()}", "containerPort": host.port,
            "protocol": p} for p in protocols]  # fmt: skip
    if host.metrics_port:
        out.append({"name": "metrics", "containerPort": host.metrics_port, "protocol": "TCP"})
    return out


def container(w: Workload) -> dict[str, Any]:
    env = [{"name": k, "value": v} for k, v in w.env.items()]
    # Each pod binds its own address, and registers that address with the registry.
    env.insert(0, {"name": "D11_ADDRESS", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}})
    mounts = [{"name": "zones", "mountPath": "/app/docker/zones", "readOnly": True},
              {"name": "gslb", "mountPath": "/app/docker/gslb", "readOnly": True}]  # fmt: skip
    for volume in w.first.volumes:
        name, path = volume.split(":")[:2]
        mounts.append({"name": name, "mountPath": path})
    if w.stateful:
        mounts.append({"name": "data", "mountPath": "/var/lib/d11/run"})
    check = probe(w)
    return {
        "name": w.first.role,
        "image": IMAGE,
        "imagePullPolicy": "IfNotPresent",
        # The module itself, not the image's entry point (infra.container), whose work is
        # the VXLAN and routes that the CNI does here.
        "command": ["python", "-m", w.first.module],
        "env": env,
        "ports": ports(w),
        "readinessProbe": {**check, "periodSeconds": 2, "timeoutSeconds": 2, "failureThreshold": 2},
        "livenessProbe": {
            **check,
            "initialDelaySeconds": 10,
            "periodSeconds": 10,
            "timeoutSeconds": 3,
            "failureThreshold": 3,
        },
        "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}},
        "volumeMounts": mounts,
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": False,
            "capabilities": {"drop": ["ALL"]},
        },
    }


def pod_spec(w: Workload) -> dict[str, Any]:
    volumes: list[dict[str, Any]] = [
        {"name": "zones", "configMap": {"name": "d11-zones"}},
        {"name": "gslb", "configMap": {"name": "d11-gslb"}},
    ]
    for volume in w.first.volumes:
        name = volume.split(":")[0]
        volumes.append({"name": name, "persistentVolumeClaim": {"claimName": name}})
    return {
        # Services listen on 53 and 80 as the unprivileged d11 user, as Docker allows.
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 1111,
            "runAsGroup": 1111,
            "fsGroup": 1111,
            "seccompProfile": {"type": "RuntimeDefault"},
            "sysctls": [{"name": "net.ipv4.ip_unprivileged_port_start", "value": "0"}],
        },
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": 10,
        "containers": [container(w)],
        "volumes": volumes,
    }


def workload(w: Workload) -> dict[str, Any]:
    meta = {"name": w.name, "labels": labels(w)}
    spec: dict[str, Any] = {
        "replicas": len(w.hosts),
        "selector": {"matchLabels": {"app.kubernetes.io/name": w.name}},
        "template": {"metadata": {"labels": labels(w)}, "spec": pod_spec(w)},
    }
    if len(w.hosts) > 1:
        # The topology's AZs become the cluster's zones: replicas spread over them.
        spec["template"]["spec"]["topologySpreadConstraints"] = [{
            "maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
            "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": {"app.kubernetes.io/name": w.name}},
        }]  # fmt: skip
    if not w.stateful:
        return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta, "spec": spec}
    spec["serviceName"] = w.name
    spec["volumeClaimTemplates"] = [{
        "metadata": {"name": "data"},
        "spec": {"accessModes": ["ReadWriteOnce"],
                 "resources": {"requests": {"storage": "1Gi"}}},
    }]  # fmt: skip
    return {"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": meta, "spec": spec}


def service(t: Topology, w: Workload) -> dict[str, Any]:
    service_ports = [{"name": p["name"], "port": p["containerPort"],
                      "targetPort": p["containerPort"], "protocol": p["protocol"]}
                     for p in ports(w)]  # fmt: skip
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": w.name, "labels": labels(w)},
        "spec": {"clusterIP": w.ip(t),
                 "selector": {"app.kubernetes.io/name": w.name}, "ports": service_ports},
    }  # fmt: skip


def entry(loads: list[Workload]) -> dict[str, Any]:
    gateway = next(w for w in loads if w.first.role == "gateway")
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "entry", "labels": {"app.kubernetes.io/part-of": "double-11"}},
        "spec": {
            "type": "LoadBalancer",
            "clusterIP": ENTRY_IP,
            "externalTrafficPolicy": "Local",  # the gateways see the phone's own address
            "selector": {"app.kubernetes.io/name": gateway.name},
            "ports": [{"name": "https", "port": 443, "targetPort": 8443, "protocol": "TCP"}],
        },
    }


def claims(t: Topology) -> list[dict[str, Any]]:
    names = sorted({v.split(":")[0] for h in t.hosts if h.role not in NOT_IN_CLUSTER
                    for v in h.volumes})  # fmt: skip
    return [{
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": name},
        # Shared by several pods, as the Compose volume is by several containers.
        "spec": {"accessModes": ["ReadWriteMany"],
                 "resources": {"requests": {"storage": "1Gi"}}},
    } for name in names]  # fmt: skip


def policies(loads: list[Workload]) -> list[dict[str, Any]]:
    """A VPC's pods take traffic from their own tenant only: tenant B cannot reach the
    shop's VPC, nor the shop tenant B's."""
    out = []
    for tenant in sorted({w.tenant for w in loads if w.first.vpc is not None}):
        out.append({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": f"vpc-{tenant}"},
            "spec": {
                "podSelector": {"matchExpressions": [
                    {"key": f"{LABEL}/tenant", "operator": "In", "values": [tenant]},
                    {"key": f"{LABEL}/role", "operator": "NotIn", "values": ["collector"]}]},
                "policyTypes": ["Ingress"],
                "ingress": [{"from": [{"podSelector": {"matchLabels": {
                    f"{LABEL}/tenant": tenant}}}]}],
            },
        })  # fmt: skip
    return out


def config_maps(table: dict[str, str]) -> list[dict[str, Any]]:
    out = []
    for name, folder, pattern in (("d11-zones", "zones", "*.zone"), ("d11-gslb", "gslb", "*.yaml")):
        data = {}
        for path in sorted((DOCKER_DIR / folder).glob(pattern)):
            if path.name.endswith(".arpa.zone"):
                continue  # the reverse zone names Docker's addresses: not rendered here
            data[path.name] = translate(path.read_text(), table)
        out.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name},
                    "data": data})  # fmt: skip
    return out


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:  # no &id001 anchors: manifests are read by people
        return True


def _dump(objects: list[dict[str, Any]]) -> str:
    return HEADER + "---\n".join(
        yaml.dump(o, Dumper=_Dumper, sort_keys=False, width=100) for o in objects
    )


def rendered() -> dict[Path, str]:
    t = topo.load(mode="docker")
    loads = workloads(t)
    table = addresses(t, loads)
    files = {
        "namespace.yaml": [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}
        ],
        "config.yaml": config_maps(table),
        "storage.yaml": claims(t),
        "workloads.yaml": [workload(w) for w in loads],
        "services.yaml": [service(t, w) for w in loads] + [entry(loads)],
        "network-policies.yaml": policies(loads),
    }
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "namespace": NAMESPACE,
        "labels": [{"pairs": {"app.kubernetes.io/part-of": "double-11"}}],
        "resources": list(files),
    }
    out = {BASE_DIR / name: _dump(objects) for name, objects in files.items()}
    out[BASE_DIR / "kustomization.yaml"] = HEADER + yaml.safe_dump(kustomization,
                                                                   sort_keys=False)  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> int:
    return render_command("k8s", __doc__ or "", rendered, argv)


if __name__ == "__main__":
    sys.exit(main())
