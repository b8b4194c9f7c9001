"""Rendering and reading the deploy artifacts: the kustomize overlays, the Pods CI runs, .gitlab-ci.yml.

Fast and offline: kubectl renders locally, every schema ships with the installed validators. The rendered
objects and the pipeline are cached: read them, never change them.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
KUBECTL = shutil.which("kubectl")
# A Kubernetes release whose schemas the pinned kubernetes-validate ships; CI's KUBERNETES_SCHEMA_VERSION
# must say the same (checked in test_gitlab_ci.py).
KUBERNETES_VERSION = "1.34.0"
OVERLAYS = ("dev", "prod")
SERVICES = {"train-svc": "train_svc", "model-svc": "model_svc", "stream-svc": "stream_svc"}
SERVICES_ORDER = ("model-svc", "train-svc", "stream-svc")
LOCAL_PACKAGES = {"sentiment", "protos", "train_svc", "model_svc", "stream_svc"}
GRPC_PORTS = {"train-svc": 50051, "model-svc": 50052}
RELEASE_STAGES = ("build", "pull_image", "deploy", "test_after_deploy")

needs_kubectl = pytest.mark.skipif(KUBECTL is None, reason="kubectl is not on PATH (CI installs it)")


def run(*args: str | Path, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=timeout_s, cwd=REPO, check=False
    )


def kubernetes_validate(path: Path) -> subprocess.CompletedProcess[str]:
    """kubernetes-validate, strict, against the pinned Kubernetes release's schemas."""
    return run(VENV_BIN / "kubernetes-validate", "--strict", "--quiet", "-k", KUBERNETES_VERSION, path)


# ---------------------------------------------------------------------------------------------- Kubernetes


@functools.cache
def rendered_text(overlay: str) -> str:
    assert KUBECTL is not None
    result = run(KUBECTL, "kustomize", REPO / "manifests" / "overlays" / overlay)
    assert result.returncode == 0, result.stderr
    return result.stdout


@functools.cache
def objects_of(overlay: str) -> list[dict[str, Any]]:
    """The rendered objects (cached: read them, never change them)."""
    return [doc for doc in yaml.safe_load_all(rendered_text(overlay)) if doc]


def ci_pod_templates() -> dict[str, dict[str, Any]]:
    """The Pods CI runs in the cluster (pull_image, test_after_deploy), placeholders filled as run-pod.sh does."""
    pods = {}
    for path in sorted((REPO / "manifests" / "ci").glob("*-pod.yaml")):
        text = path.read_text()
        text = text.replace("__POD_NAME__", "ci-check").replace("__MODULE__", "model_svc")
        image = (
            gitlab_ci()["variables"]["GRPCURL_IMAGE"]
            if "smoke" in path.name
            else "registry.example.com/tweet-sentiment/model-svc:v1.2.3"
        )
        text = text.replace("__IMAGE__", image)
        pods[path.name] = yaml.safe_load(text)
    return pods


def find(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    for obj in objects:
        if obj["kind"] == kind and obj["metadata"]["name"] == name:
            return obj
    raise AssertionError(f"no {kind}/{name} in the rendered overlay")


def pod_specs(objects: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for obj in objects:
        kind, spec = obj["kind"], obj.get("spec", {})
        if kind in {"Deployment", "StatefulSet", "DaemonSet", "Job"}:
            pod = spec["template"]["spec"]
        elif kind == "CronJob":
            pod = spec["jobTemplate"]["spec"]["template"]["spec"]
        elif kind == "Pod":
            pod = spec
        else:
            continue
        yield f"{kind}/{obj['metadata']['name']}", pod


def pod_labels(obj: dict[str, Any]) -> dict[str, str]:
    if obj["kind"] == "CronJob":
        return dict(obj["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"])
    if obj["kind"] == "Pod":
        return dict(obj["metadata"]["labels"])
    return dict(obj["spec"]["template"]["metadata"]["labels"])


def config_data(objects: list[dict[str, Any]], prefix: str) -> dict[str, str]:
    """The data of the generated ConfigMap `<prefix>-<hash>`."""
    maps = [o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith(prefix + "-")]
    assert len(maps) == 1, f"expected one ConfigMap {prefix}-<hash>"
    return dict(maps[0]["data"])


def container(objects: list[dict[str, Any]], deployment: str) -> dict[str, Any]:
    pod = find(objects, "Deployment", deployment)["spec"]["template"]["spec"]
    return next(c for c in pod["containers"] if c["name"] == deployment)


def cpu_cores(quantity: str | int) -> float:
    text = str(quantity)
    return int(text[:-1]) / 1000 if text.endswith("m") else float(text)


def memory_bytes(quantity: str | int) -> int:
    """A Kubernetes memory quantity in bytes (the binary suffixes the manifests use, or none)."""
    text = str(quantity)
    for suffix, power in (("Ki", 10), ("Mi", 20), ("Gi", 30)):
        if text.endswith(suffix):
            return int(text[: -len(suffix)]) << power
    return int(text)


def mount_covering(pod: dict[str, Any], ctr: dict[str, Any], path: str) -> dict[str, Any] | None:
    """The volume mounted at `path` or a parent of it, if any."""
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    best = None
    for mount in ctr.get("volumeMounts", []):
        root = mount["mountPath"].rstrip("/") + "/"
        if (path.rstrip("/") + "/").startswith(root) and (best is None or len(root) > len(best[0])):
            best = (root, volumes[mount["name"]])
    return best[1] if best else None


def cronjob_command(objects: list[dict[str, Any]]) -> str:
    cronjob = next(o for o in objects if o["kind"] == "CronJob")
    ctr = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    assert ctr["command"] == ["/bin/sh", "-c"], "the CronJob runs its one documented command line in a shell"
    (line,) = ctr["args"]
    return str(line)


# ---------------------------------------------------------------------------------------------- GitLab CI


@functools.cache
def gitlab_ci() -> dict[str, Any]:
    return dict(yaml.safe_load((REPO / ".gitlab-ci.yml").read_text()))


def ci_jobs() -> dict[str, dict[str, Any]]:
    reserved = {"workflow", "stages", "variables", "default", "include", "image", "services", "cache"}
    return {
        name: job
        for name, job in gitlab_ci().items()
        if not name.startswith(".") and name not in reserved and isinstance(job, dict)
    }


def resolved(job: dict[str, Any]) -> dict[str, Any]:
    """A job with its `extends` templates merged in (GitLab's deep merge, good enough for these keys)."""
    config = gitlab_ci()
    parents = job.get("extends", [])
    merged: dict[str, Any] = {}
    for parent in [parents] if isinstance(parents, str) else parents:
        merged.update(resolved(config[parent]))
    merged.update({k: v for k, v in job.items() if k != "extends"})
    return merged


def assert_container_policy(where: str, pod: dict[str, Any], ctr: dict[str, Any]) -> None:
    """The security and resource policy every container meets, in the overlays and in CI's Pods."""
    pod_sc, sc = pod.get("securityContext", {}), ctr.get("securityContext", {})
    effective = {**pod_sc, **sc}
    assert effective.get("runAsNonRoot") is True, where
    assert effective.get("runAsUser", 1) != 0, where
    assert sc.get("readOnlyRootFilesystem") is True, where
    assert sc.get("allowPrivilegeEscalation") is False, where
    assert sc.get("capabilities", {}).get("drop") == ["ALL"], where
    assert not sc.get("capabilities", {}).get("add"), where
    assert effective.get("seccompProfile", {}).get("type") == "RuntimeDefault", where
    assert not sc.get("privileged"), where
    resources = ctr.get("resources", {})
    for part in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(resources.get(part, {})), f"{where}: {part} needs cpu and memory"
    image = ctr["image"]
    name, _, tag = image.rpartition(":") if "@" not in image else (image, "", "digest")
    assert name and "/" not in tag and tag not in {"", "latest"}, (
        f"{where}: image {image!r} needs a pinned tag"
    )
    if "grpcurl" not in image:  # the Python programs write caches and scratch files under /tmp
        assert mount_covering(pod, ctr, "/tmp") is not None, f"{where}: /tmp is not writable"
    assert pod.get("automountServiceAccountToken") is False, where
