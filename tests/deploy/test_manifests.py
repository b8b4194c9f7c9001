"""The Kubernetes overlays, rendered by kustomize and validated strictly against the Kubernetes schemas, then
walked by a policy check: security and resources, probes, scaling, writable paths, Secrets, IRSA, namespace and
the settings each program accepts."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from model_svc.config import ModelConfig
from stream_svc.config import StreamConfig
from tests.deploy.helpers import (
    GRPC_PORTS,
    REPO,
    SERVICES,
    assert_container_policy,
    config_data,
    container,
    cpu_cores,
    find,
    kubernetes_validate,
    memory_bytes,
    mount_covering,
    objects_of,
    pod_specs,
    rendered_text,
)
from train_svc.config import TrainConfig


def test_overlay_renders_and_validates_strictly(overlay: str, tmp_path: Path) -> None:
    path = tmp_path / f"{overlay}.yaml"
    path.write_text(rendered_text(overlay))
    result = kubernetes_validate(path)
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
    result = kubernetes_validate(path)
    assert result.returncode != 0 and "clusterIp" in result.stdout + result.stderr


def test_every_container_meets_the_security_and_resource_policy(overlay: str) -> None:
    specs = list(pod_specs(objects_of(overlay)))
    assert len(specs) == 4, "three Deployments and the CronJob"
    for where, pod in specs:
        for ctr in pod.get("initContainers", []) + pod["containers"]:
            assert_container_policy(f"{overlay} {where}/{ctr['name']}", pod, ctr)


def test_serving_containers_have_native_grpc_probes(overlay: str) -> None:
    objects = objects_of(overlay)
    for deployment, port in GRPC_PORTS.items():
        ctr = container(objects, deployment)
        assert {"name": "grpc", "containerPort": port, "protocol": "TCP"} in ctr["ports"]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert ctr[probe]["grpc"]["port"] == port, f"{deployment} {probe}"
    stream = container(objects, "stream-svc")  # no gRPC: HTTP probes on its metrics port
    assert stream["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "metrics"}
    assert stream["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert {p["name"] for p in stream["ports"]} == {"metrics"}


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
    # WORKERS and TF_INTRA_OP_THREADS are the CPU limit (one worker, one TF thread a CPU), whole CPUs,
    # Guaranteed QoS; ~1.1 GiB a worker (its peak while a new version loads).
    limits, requests = ctr["resources"]["limits"], ctr["resources"]["requests"]
    assert cpu_cores(limits["cpu"]).is_integer() and limits == requests
    for name in ("WORKERS", "TF_INTRA_OP_THREADS"):
        (var,) = [e for e in ctr["env"] if e["name"] == name]
        if "value" in var:
            assert int(var["value"]) == cpu_cores(limits["cpu"]), name
        else:
            ref = var["valueFrom"]["resourceFieldRef"]
            assert (ref["resource"], ref["containerName"], str(ref.get("divisor", "1"))) == (
                "limits.cpu",
                "model-svc",
                "1",
            ), name
    assert memory_bytes(limits["memory"]) >= cpu_cores(limits["cpu"]) * 1.1 * 2**30
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
