"""The rendered NetworkPolicies, evaluated flow by flow (tests/deploy/netpol.py): exactly the designed flows pass."""

from __future__ import annotations

from typing import Any

from tests.deploy.helpers import SERVICES_ORDER, ci_pod_templates, find, objects_of, pod_labels, pod_specs
from tests.deploy.netpol import Endpoint, flow_allowed

PROMETHEUS = ({"kubernetes.io/metadata.name": "monitoring"}, {"app.kubernetes.io/name": "prometheus"})
KUBE_DNS = ({"kubernetes.io/metadata.name": "kube-system"}, {"k8s-app": "kube-dns"})


def pod_endpoint(obj: dict[str, Any]) -> Endpoint:
    """The pod a workload (or a Pod) runs, with its labels and named container ports."""
    (_, spec), *_ = pod_specs([obj])
    ports = {p["name"]: p["containerPort"] for c in spec["containers"] for p in c.get("ports", [])}
    return Endpoint(pod_labels(obj), ports)


def test_network_policies_admit_exactly_the_designed_flows(overlay: str) -> None:
    objects = objects_of(overlay)
    policies = [o for o in objects if o["kind"] == "NetworkPolicy"]
    deny = find(objects, "NetworkPolicy", "default-deny-all")["spec"]
    assert deny == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}

    model, train, stream = (pod_endpoint(find(objects, "Deployment", n)) for n in SERVICES_ORDER)
    trigger = pod_endpoint(next(o for o in objects if o["kind"] == "CronJob"))
    smoke = pod_endpoint(ci_pod_templates()["smoke-test-pod.yaml"])
    dns = Endpoint(KUBE_DNS[1], namespace=KUBE_DNS[0])
    prometheus = Endpoint(PROMETHEUS[1], namespace=PROMETHEUS[0])
    public = Endpoint(ip="52.216.0.10")  # an S3 / api.x.com style public address

    allowed = [
        (stream, model, 50052),
        (trigger, train, 50051),
        (smoke, model, 50052),
        (smoke, train, 50051),
        (stream, public, 443),
        (model, public, 443),
        (train, public, 443),
        (prometheus, model, 8002),
        (prometheus, train, 8001),
        (prometheus, stream, 8003),
    ]
    for src, dst, port in allowed:
        assert flow_allowed(policies, src, dst, port), (src.labels, dst.labels or dst.ip, port)
    for src in (model, train, stream, trigger, smoke):
        assert flow_allowed(policies, src, dns, 53, "UDP") and flow_allowed(policies, src, dns, 53, "TCP")
    denied = [
        (stream, train, 50051),
        (trigger, model, 50052),
        (model, train, 50051),
        (train, model, 50052),
        (stream, public, 80),
        (trigger, public, 443),
        (model, Endpoint(ip="169.254.169.254"), 80),
        (model, Endpoint(ip="169.254.169.254"), 443),
        (stream, Endpoint(ip="10.0.3.7"), 443),
        (Endpoint({"app": "other"}), model, 50052),
        (Endpoint(PROMETHEUS[1], namespace={"kubernetes.io/metadata.name": "default"}), model, 8002),
        (prometheus, model, 50052),
    ]
    for src, dst, port in denied:
        assert not flow_allowed(policies, src, dst, port), (src.labels or src.ip, dst.labels or dst.ip, port)
