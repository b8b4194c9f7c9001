"""The NetworkPolicy evaluator itself, on small hand-written policies and pods, so its verdicts on the rendered
policies can be trusted: no policy, default deny, allowed and denied flows, named ports and protocols, namespace
selectors, ipBlock with except, label expressions."""

from __future__ import annotations

from typing import Any

import pytest

from tests.deploy.netpol import Endpoint, flow_allowed, policy_types, selects

WEB = Endpoint({"app": "web"}, {"http": 8080})
DB = Endpoint({"app": "db"}, {"pg": 5432})
MONITORING = {"kubernetes.io/metadata.name": "monitoring"}


def policy(name: str, pods: dict[str, str], **spec: Any) -> dict[str, Any]:
    return {
        "kind": "NetworkPolicy",
        "metadata": {"name": name},
        "spec": {"podSelector": {"matchLabels": pods}, **spec},
    }


DENY_ALL = {"metadata": {"name": "deny"}, "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}}
WEB_TO_DB = [
    DENY_ALL,
    policy(
        "web-egress",
        {"app": "web"},
        policyTypes=["Egress"],
        egress=[{"to": [{"podSelector": {"matchLabels": {"app": "db"}}}], "ports": [{"port": 5432}]}],
    ),
    policy(
        "db-ingress",
        {"app": "db"},
        policyTypes=["Ingress"],
        ingress=[{"from": [{"podSelector": {"matchLabels": {"app": "web"}}}], "ports": [{"port": "pg"}]}],
    ),
]


def test_with_no_policy_everything_flows() -> None:
    assert flow_allowed([], WEB, DB, 5432) and flow_allowed([], DB, WEB, 1, "UDP")
    assert flow_allowed([], WEB, Endpoint(ip="203.0.113.9"), 443)


def test_default_deny_isolates_both_directions() -> None:
    assert not flow_allowed([DENY_ALL], WEB, DB, 5432)
    assert not flow_allowed([DENY_ALL], WEB, Endpoint(ip="203.0.113.9"), 443)
    ingress_only = {"spec": {"podSelector": {}, "policyTypes": ["Ingress"]}}
    assert not flow_allowed([ingress_only], WEB, DB, 5432)
    assert flow_allowed([ingress_only], WEB, Endpoint(ip="203.0.113.9"), 443), "egress is not isolated"


def test_a_flow_needs_both_the_source_egress_and_the_destination_ingress() -> None:
    assert flow_allowed(WEB_TO_DB, WEB, DB, 5432), "the named port `pg` on the db pod is 5432"
    assert not flow_allowed(WEB_TO_DB, DB, WEB, 8080), "nothing lets db call web"
    assert not flow_allowed(WEB_TO_DB, WEB, DB, 5433), "another port"
    assert not flow_allowed(WEB_TO_DB, WEB, DB, 5432, "UDP"), "the protocol defaults to TCP"
    egress_only = [DENY_ALL, WEB_TO_DB[1]]
    assert not flow_allowed(egress_only, WEB, DB, 5432), "db's ingress is still denied"
    other_pod = Endpoint({"app": "db", "tier": "x"}, {"pg": 5432})
    assert flow_allowed(WEB_TO_DB, WEB, other_pod, 5432), "matchLabels is a subset match"


def test_empty_or_missing_peers_and_ports_match_everything() -> None:
    open_egress = policy("open", {"app": "web"}, policyTypes=["Egress"], egress=[{}])
    assert flow_allowed([open_egress], WEB, Endpoint(ip="203.0.113.9"), 1234, "UDP")
    empty_lists = policy("empty", {"app": "web"}, policyTypes=["Egress"], egress=[{"to": [], "ports": []}])
    assert flow_allowed([empty_lists], WEB, DB, 9)
    no_rules = policy("none", {"app": "web"}, policyTypes=["Egress"])
    assert not flow_allowed([no_rules], WEB, DB, 9), "isolated with no rule: nothing passes"


def test_namespace_selectors_admit_pods_of_other_namespaces_and_plain_pod_selectors_do_not() -> None:
    scraper = Endpoint({"app": "prometheus"}, namespace=MONITORING)
    same_labels_here = Endpoint({"app": "prometheus"})
    elsewhere = Endpoint({"app": "prometheus"}, namespace={"kubernetes.io/metadata.name": "default"})
    scrape = policy(
        "scrape",
        {"app": "web"},
        policyTypes=["Ingress"],
        ingress=[
            {
                "from": [
                    {
                        "namespaceSelector": {"matchLabels": MONITORING},
                        "podSelector": {"matchLabels": {"app": "prometheus"}},
                    }
                ],
                "ports": [{"port": "http"}],
            }
        ],
    )
    assert flow_allowed([scrape], scraper, WEB, 8080)
    assert not flow_allowed([scrape], elsewhere, WEB, 8080), "another namespace"
    assert not flow_allowed([scrape], same_labels_here, WEB, 8080), "this namespace is not `monitoring`"
    assert not flow_allowed([scrape], Endpoint({"app": "grafana"}, namespace=MONITORING), WEB, 8080)
    local_only = policy(
        "local", {"app": "web"}, policyTypes=["Ingress"], ingress=[{"from": [{"podSelector": {}}]}]
    )
    assert flow_allowed([local_only], DB, WEB, 8080) and not flow_allowed([local_only], scraper, WEB, 8080)
    any_namespace = policy(
        "any-ns", {"app": "web"}, policyTypes=["Ingress"], ingress=[{"from": [{"namespaceSelector": {}}]}]
    )
    assert flow_allowed([any_namespace], elsewhere, WEB, 8080) and flow_allowed([any_namespace], DB, WEB, 1)
    assert not flow_allowed([any_namespace], Endpoint(ip="10.1.2.3"), WEB, 8080), "an IP is not a pod"


def test_ip_blocks_with_except_match_outside_addresses_only() -> None:
    public_https = policy(
        "https-out",
        {"app": "web"},
        policyTypes=["Egress"],
        egress=[
            {
                "to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8", "169.254.169.254/32"]}}],
                "ports": [{"port": 443, "protocol": "TCP"}],
            }
        ],
    )
    assert flow_allowed([public_https], WEB, Endpoint(ip="52.216.0.10"), 443)
    assert not flow_allowed([public_https], WEB, Endpoint(ip="52.216.0.10"), 80)
    assert not flow_allowed([public_https], WEB, Endpoint(ip="10.0.3.7"), 443), "in an except"
    assert not flow_allowed([public_https], WEB, Endpoint(ip="169.254.169.254"), 443), "the metadata address"
    assert not flow_allowed([public_https], WEB, DB, 443), "a pod is not matched by an ipBlock here"
    assert flow_allowed([public_https], DB, Endpoint(ip="10.0.3.7"), 443), "db is not selected: not isolated"


def test_label_expressions() -> None:
    labels = {"app": "web", "tier": "front"}
    assert selects({}, labels) and selects({}, {})
    assert selects(
        {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["front", "x"]}]}, labels
    )
    assert not selects(
        {"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["front"]}]}, labels
    )
    assert selects({"matchExpressions": [{"key": "zone", "operator": "NotIn", "values": ["a"]}]}, labels)
    assert selects({"matchExpressions": [{"key": "app", "operator": "Exists"}]}, labels)
    assert not selects({"matchExpressions": [{"key": "app", "operator": "DoesNotExist"}]}, labels)
    both = {"matchLabels": {"app": "web"}, "matchExpressions": [{"key": "tier", "operator": "Exists"}]}
    assert selects(both, labels) and not selects(both, {"app": "web"})


@pytest.mark.parametrize(
    ("spec", "types"),
    [
        ({"podSelector": {}}, ["Ingress"]),
        ({"podSelector": {}, "egress": []}, ["Ingress", "Egress"]),
        ({"podSelector": {}, "policyTypes": ["Egress"]}, ["Egress"]),
    ],
)
def test_policy_types_default_as_the_api_server_sets_them(spec: dict[str, Any], types: list[str]) -> None:
    assert policy_types(spec) == types
