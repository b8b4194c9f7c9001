"""A NetworkPolicy evaluator: does a set of policies (in one namespace) admit a flow from one endpoint to another?

Kubernetes semantics, as far as these manifests need them: a pod is isolated for Ingress (or Egress) once any
policy of that type selects it, and then some rule of such a policy must admit the flow; a flow needs both ends
to admit it (the source's egress, the destination's ingress). Peers: `podSelector` (this namespace),
`namespaceSelector` (with or without a `podSelector`: both must match), `ipBlock` with `except` (outside
addresses only). Ports: numbers or named container ports of the destination, `protocol` defaulting to TCP; an
empty or missing `from`/`to`/`ports` matches everything. Not modelled: `endPort`, pod IPs in an `ipBlock`.
Endpoints outside the namespace are governed by no policy here (their own namespace's policies are not known).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

# The labels the namespace of the evaluated policies carries (its `kubernetes.io/metadata.name`).
HOME_NAMESPACE = {"kubernetes.io/metadata.name": "this"}


@dataclass
class Endpoint:
    """A pod in the namespace (labels, named ports), a pod elsewhere (`namespace`: that namespace's labels), or
    an outside IP address (`ip`)."""

    labels: dict[str, str] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    namespace: dict[str, str] | None = None
    ip: str = ""


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A label selector (matchLabels and matchExpressions) against labels; `{}` selects everything."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        present = expr["key"] in labels
        value = labels.get(expr["key"])
        ok = {
            "In": present and value in expr.get("values", []),
            "NotIn": not present or value not in expr.get("values", []),
            "Exists": present,
            "DoesNotExist": not present,
        }[expr["operator"]]
        if not ok:
            return False
    return True


def peer_matches(peer: dict[str, Any], other: Endpoint, home: dict[str, str]) -> bool:
    """One `from`/`to` entry against the endpoint at the other end."""
    if "ipBlock" in peer:
        if not other.ip:
            return False
        address = ipaddress.ip_address(other.ip)
        block = peer["ipBlock"]
        return address in ipaddress.ip_network(block["cidr"]) and not any(
            address in ipaddress.ip_network(e) for e in block.get("except", [])
        )
    if other.ip:
        return False
    namespace = other.namespace if other.namespace is not None else home
    if "namespaceSelector" in peer:
        if not selects(peer["namespaceSelector"], namespace):
            return False
    elif namespace != home:
        return False
    return selects(peer.get("podSelector", {}), other.labels)


def port_matches(rule: dict[str, Any], port: int, protocol: str, dst: Endpoint) -> bool:
    """A rule's `ports` against the destination port (a named port is looked up on the destination)."""
    if not rule.get("ports"):
        return True
    for entry in rule["ports"]:
        number = entry.get("port")
        number = dst.ports.get(number, -1) if isinstance(number, str) else number
        if entry.get("protocol", "TCP") == protocol and number in (None, port):
            return True
    return False


def policy_types(spec: dict[str, Any]) -> list[str]:
    """`policyTypes`, or the API server's default: Ingress, plus Egress when there are egress rules."""
    return list(spec.get("policyTypes") or ["Ingress", *(["Egress"] if "egress" in spec else [])])


def side_allows(
    policies: list[dict[str, Any]], kind: str, me: Endpoint, other: Endpoint, port: int, protocol: str
) -> bool:
    """Isolated for `kind` (Ingress/Egress) if any policy selects `me` for it; then some rule must match."""
    applying = [
        p
        for p in policies
        if kind in policy_types(p["spec"]) and selects(p["spec"]["podSelector"], me.labels)
    ]
    if me.ip or me.namespace is not None or not applying:
        return True
    key, peers_key = ("ingress", "from") if kind == "Ingress" else ("egress", "to")
    dst = me if kind == "Ingress" else other
    for policy in applying:
        for rule in policy["spec"].get(key) or []:
            peers = rule.get(peers_key)
            if (not peers or any(peer_matches(p, other, HOME_NAMESPACE) for p in peers)) and port_matches(
                rule, port, protocol, dst
            ):
                return True
    return False


def flow_allowed(
    policies: list[dict[str, Any]], src: Endpoint, dst: Endpoint, port: int, protocol: str = "TCP"
) -> bool:
    """Both ends admit it: the source's egress and the destination's ingress."""
    return side_allows(policies, "Egress", src, dst, port, protocol) and side_allows(
        policies, "Ingress", dst, src, port, protocol
    )
