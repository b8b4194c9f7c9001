"""The monitoring that ships with the service: rules checked and unit-tested with the real promtool, every
alert fired and kept quiet by a test and given a runbook, every series the rules and the dashboard read
exported by a program, the PodMonitors pointed at real pods and ports, the component in both overlays."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from model_svc.metrics import ModelMetrics
from stream_svc.metrics import StreamMetrics
from tests.deploy.helpers import REPO, VENV_BIN, find, objects_of, pod_labels, run
from train_svc.metrics import TrainMetrics

MONITORING = REPO / "manifests" / "monitoring"
PROMTOOL = VENV_BIN / "promtool"
# Series from outside the programs: kube-state-metrics (the CronJob's Jobs), Prometheus' own.
EXTERNAL_SERIES = {"kube_job_status_failed", "up"}
PROMQL_WORDS = {
    "sum", "max", "min", "avg", "count", "by", "without", "on", "ignoring", "unless", "and", "or", "rate",
    "increase", "histogram_quantile", "time", "label_values", "le", "bool", "offset",
}  # fmt: skip


def rule_groups() -> list[dict[str, Any]]:
    rule = yaml.safe_load((MONITORING / "prometheusrule.yaml").read_text())
    assert rule["kind"] == "PrometheusRule" and rule["apiVersion"] == "monitoring.coreos.com/v1"
    groups: list[dict[str, Any]] = rule["spec"]["groups"]
    return groups


def alerts() -> dict[str, dict[str, Any]]:
    return {r["alert"]: r for g in rule_groups() for r in g["rules"] if "alert" in r}


@pytest.fixture
def promtool_dir(tmp_path: Path) -> Path:
    """The rules as promtool reads them (the PrometheusRule's spec) beside the unit tests."""
    if not PROMTOOL.exists():
        pytest.fail(f"{PROMTOOL} is missing: `make tools` installs it (make test does)")
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": rule_groups()}))
    shutil.copy(MONITORING / "tests" / "rules.test.yaml", tmp_path / "rules.test.yaml")
    return tmp_path


def test_promtool_checks_the_rules(promtool_dir: Path) -> None:
    result = run(PROMTOOL, "check", "rules", promtool_dir / "rules.yaml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {sum(len(g['rules']) for g in rule_groups())} rules found" in result.stdout


def test_promtool_unit_tests_pass(promtool_dir: Path) -> None:
    result = run(PROMTOOL, "test", "rules", promtool_dir / "rules.test.yaml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_the_unit_tests_catch_a_wrong_expectation(promtool_dir: Path) -> None:
    """A rule whose threshold moved fails its test: the unit tests compare what fires, not just syntax."""
    rules = promtool_dir / "rules.yaml"
    rules.write_text(rules.read_text().replace("> 0.01", "> 0.5"))
    result = run(PROMTOOL, "test", "rules", promtool_dir / "rules.test.yaml")
    assert result.returncode != 0 and "ModelSvcErrorRatioHigh" in result.stdout + result.stderr


def test_every_alert_fires_in_a_test_stays_quiet_in_one_and_has_a_runbook() -> None:
    tests = yaml.safe_load((MONITORING / "tests" / "rules.test.yaml").read_text())["tests"]
    readme = (REPO / "README.md").read_text()
    headings = {m.group(1).strip().lower() for m in re.finditer(r"^#{2,5} (.+)$", readme, re.MULTILINE)}
    for name, rule in alerts().items():
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        assert rule["annotations"]["runbook_url"].endswith(f"README.md#{name.lower()}"), name
        assert name.lower() in headings, f"README.md has no runbook heading for {name}"
        fired = quiet = False
        for test in tests:
            for case in test["alert_rule_test"]:
                if case["alertname"] != name:
                    continue
                expected = case["exp_alerts"] or []
                fired |= bool(expected)
                # Quiet: an eval that expects nothing, or input series that no expected alert covers.
                inputs = [
                    dict(re.findall(r'(\w+)="([^"]*)"', series["series"])) for series in test["input_series"]
                ]
                quiet |= not expected or any(not covered(labels, expected) for labels in inputs)
        assert fired and quiet, f"{name}: fired by a test {fired}, kept quiet by one {quiet}"


def covered(labels: dict[str, str], expected: list[dict[str, Any]]) -> bool:
    """Some expected alert stands for a series with `labels` (every label they share is equal)."""
    for alert in expected:
        shared = {k: v for k, v in alert["exp_labels"].items() if k in labels}
        if shared and all(labels[k] == str(v) for k, v in shared.items()):
            return True
    return False


def series_names(expr: str) -> set[str]:
    """Metric names a PromQL expression reads (label names, functions and keywords left out)."""
    expr = re.sub(r"\{[^}]*\}", "", re.sub(r'"[^"]*"', "", expr))  # label matchers and strings
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges
    names = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr))
    grouping = {
        w
        for group in re.findall(r"\b(?:by|on|without|ignoring)\s*\(([^)]*)\)", expr)
        for w in re.findall(r"\w+", group)
    }
    return {
        n for n in names - PROMQL_WORDS - grouping if not n.startswith("$") and not re.fullmatch(r"\d\w*", n)
    }


def exported_series() -> set[str]:
    """Every series name the three programs' registries can export (with their _total/_bucket/... forms)."""
    names: set[str] = set()
    for metrics in (ModelMetrics(), TrainMetrics(), StreamMetrics()):
        for family in metrics.registry.collect():
            suffixes = {
                "counter": ("_total", "_created"),
                "histogram": ("_bucket", "_sum", "_count", "_created"),
                "summary": ("_sum", "_count", "_created"),
            }.get(family.type, ("",))
            names |= {family.name + s for s in suffixes} | {family.name}
    # Registered by each server as it starts (sentiment.metrics.build_info), beside the metrics above.
    return names | {f"{program}_build_info" for program in ("train_svc", "model_svc", "stream_svc")}


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((MONITORING / "dashboards" / "tweet-sentiment.json").read_text())
    return data


def test_rules_and_dashboard_read_only_series_the_programs_export() -> None:
    exported = exported_series() | EXTERNAL_SERIES
    for name, rule in alerts().items():
        missing = series_names(rule["expr"]) - exported
        assert not missing, f"{name} reads series no program exports: {missing}"
    for panel in dashboard()["panels"]:
        for target in panel.get("targets", []):
            missing = series_names(target["expr"]) - exported
            assert not missing, f"panel {panel['title']!r} reads series no program exports: {missing}"


def test_the_dashboard_has_a_row_per_program_and_the_sentiment_mix() -> None:
    board = dashboard()
    assert board["uid"] == "tweet-sentiment" and board["schemaVersion"] >= 36
    rows = [p["title"] for p in board["panels"] if p["type"] == "row"]
    assert rows == ["model-svc", "stream-svc", "Sentiment mix", "train-svc"]
    mix = [p for p in board["panels"] if p["title"].startswith("Share of tweets by sentiment")]
    assert mix and "stream_tweets_written_total" in mix[0]["targets"][0]["expr"]
    assert "by (sentiment)" in mix[0]["targets"][0]["expr"]
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)) and all(p["gridPos"]["w"] <= 24 for p in board["panels"])


def test_each_overlay_ships_the_monitoring_component(overlay: str) -> None:
    objects = objects_of(overlay)
    namespace = find(objects, "Deployment", "model-svc")["metadata"]["namespace"]
    for service in ("train-svc", "model-svc", "stream-svc"):
        monitor = find(objects, "PodMonitor", service)
        assert monitor["metadata"]["namespace"] == namespace
        deployment = find(objects, "Deployment", service)
        labels = pod_labels(deployment)
        selector = monitor["spec"]["selector"]["matchLabels"]
        assert selector.items() <= labels.items(), (
            f"{service}: the PodMonitor selects no pod of its Deployment"
        )
        ports = {
            p["name"]
            for c in deployment["spec"]["template"]["spec"]["containers"]
            for p in c.get("ports", [])
        }
        for endpoint in monitor["spec"]["podMetricsEndpoints"]:
            assert endpoint["port"] in ports, f"{service}: no container port named {endpoint['port']}"
    rule = find(objects, "PrometheusRule", "tweet-sentiment")
    assert rule["spec"]["groups"] == rule_groups()
    board = find(objects, "ConfigMap", "tweet-sentiment-dashboard")
    assert board["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(board["data"]["tweet-sentiment.json"]) == dashboard()
