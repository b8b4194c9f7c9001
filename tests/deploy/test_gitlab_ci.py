"""The GitLab pipeline: GitLab's schema, the five stages, release rules, per-service merge request rules, the make
targets CI calls and the versions it pins."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from tests.deploy.ci_rules import (
    MERGE_REQUEST,
    change_globs,
    evaluate_if,
    glob_regex,
    imported_files,
    merge_request_jobs,
    merge_request_tests,
)
from tests.deploy.helpers import (
    KUBERNETES_VERSION,
    LOCAL_PACKAGES,
    RELEASE_STAGES,
    REPO,
    SERVICES,
    VENV_BIN,
    ci_jobs,
    gitlab_ci,
    resolved,
    run,
)


def test_gitlab_ci_validates_against_the_gitlab_schema() -> None:
    result = run(
        VENV_BIN / "check-jsonschema", "--builtin-schema", "vendor.gitlab-ci", REPO / ".gitlab-ci.yml"
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_gitlab_ci_has_the_five_stages_in_order() -> None:
    assert gitlab_ci()["stages"] == ["test_before_build", *RELEASE_STAGES]
    stages = {resolved(job).get("stage") for job in ci_jobs().values()}
    assert stages == {"test_before_build", *RELEASE_STAGES}


RELEASE_TAG = {"CI_COMMIT_TAG": "v1.2.3", "CI_PIPELINE_SOURCE": "push", "CI_DEFAULT_BRANCH": "main"}
DEFAULT_BRANCH = {"CI_COMMIT_BRANCH": "main", "CI_DEFAULT_BRANCH": "main", "CI_PIPELINE_SOURCE": "push"}


def runs_on(job: dict[str, object], variables: dict[str, str]) -> bool:
    """Whether the job's rules admit a pipeline with `variables` (a manual rule counts as not running)."""
    for rule in job.get("rules", []):  # type: ignore[attr-defined]
        if evaluate_if(str(rule.get("if", "true")), variables):
            return bool(rule.get("when", "on_success") != "manual")
    return False


def test_delivery_never_runs_for_merge_requests_and_production_only_for_release_tags() -> None:
    for name, raw in ci_jobs().items():
        job = resolved(raw)
        if job["stage"] == "test_before_build":
            continue
        assert job.get("rules") and not runs_on(job, MERGE_REQUEST), name
        if name == "rollback":
            assert "ROLLBACK_TAG" in json.dumps(job["script"]) and not runs_on(job, RELEASE_TAG)
            continue
        production = (job.get("environment") or {}).get("name") == "production" or name.endswith(":prod")
        assert runs_on(job, RELEASE_TAG), f"{name} must run for a release tag"
        assert runs_on(job, DEFAULT_BRANCH) != production, f"{name}: the default branch goes to dev only"
    guard = resolved(ci_jobs()["release:guard"])
    assert "$CI_COMMIT_TAG" in guard["rules"][0]["if"]
    assert any("merge-base --is-ancestor" in line for line in guard["script"])


def test_images_are_built_daemonless_scanned_then_dev_smoke_tested_before_production() -> None:
    jobs = {name: resolved(job) for name, job in ci_jobs().items()}
    variables = gitlab_ci()["variables"]
    text = (REPO / ".gitlab-ci.yml").read_text()
    assert "kaniko" not in text.lower(), "kaniko is unmaintained"
    build = jobs["build"]
    assert build["image"] == "$BUILDAH_IMAGE" and variables["BUILDAH_IMAGE"].startswith(
        "quay.io/buildah/stable:v"
    )
    script = " ".join(build["script"])
    assert "buildah build" in script and 'buildah push "$CI_REGISTRY_IMAGE/$SERVICE:$IMAGE_TAG"' in script
    assert "--password-stdin" in script and build["variables"]["BUILDAH_ISOLATION"] == "chroot"
    assert [m["SERVICE"] for m in build["parallel"]["matrix"]] == [list(SERVICES)]
    # Images are tagged like the release on a tag, and after the commit on the default branch.
    tags = {
        str(rule["if"]): rule["variables"]["IMAGE_TAG"]
        for rule in gitlab_ci()["workflow"]["rules"]
        if "variables" in rule
    }
    assert tags == {
        "$CI_COMMIT_TAG =~ /^v\\d+\\.\\d+\\.\\d+$/": "$CI_COMMIT_TAG",
        "$CI_COMMIT_BRANCH == $CI_DEFAULT_BRANCH": "$CI_DEFAULT_BRANCH-$CI_COMMIT_SHORT_SHA",
    }
    scan = jobs["scan"]
    assert scan["stage"] == "build" and scan["needs"] == ["build"]
    assert scan["image"]["name"] == "$TRIVY_IMAGE" and variables["TRIVY_IMAGE"].startswith("aquasec/trivy:")
    (line,) = scan["script"]
    assert "--exit-code 1" in line and "--severity CRITICAL" in line and "--ignore-unfixed" in line
    assert jobs["pull_image"]["needs"] == ["scan"] and jobs["pull_image:prod"]["needs"] == ["scan"]
    # dev, its verification, then production and its verification: both GitLab environments.
    chain = [
        ("deploy:dev", "deploy", {"name": "dev", "deployment_tier": "development"}, ["pull_image"]),
        ("smoke:dev", "deploy", {"name": "dev", "action": "verify"}, ["deploy:dev"]),
        (
            "deploy:prod",
            "deploy",
            {"name": "production", "deployment_tier": "production"},
            ["smoke:dev", "pull_image:prod"],
        ),
        ("smoke:prod", "test_after_deploy", {"name": "production", "action": "verify"}, ["deploy:prod"]),
    ]
    for name, stage, environment, needs in chain:
        assert jobs[name]["stage"] == stage and jobs[name]["environment"] == environment, name
        assert jobs[name]["needs"] == needs, name
    assert jobs["deploy:dev"]["variables"] == {
        "KUBE_NAMESPACE": "$DEV_NAMESPACE",
        "OVERLAY": "manifests/overlays/dev",
    }
    for name in ("smoke:dev", "smoke:prod"):
        assert "smoke-test-pod.yaml" in " ".join(jobs[name]["script"]), name


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


def repository_files() -> list[str]:
    """Tracked files and new ones not ignored (what a merge request can change)."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    result = run("git", "ls-files", "--cached", "--others", "--exclude-standard")
    assert result.returncode == 0, result.stderr
    return [path for path in result.stdout.splitlines() if (REPO / path).is_file()]


def test_change_globs_follow_gitlab_matching() -> None:
    assert glob_regex("sentiment/**/*").match("sentiment/ml/layers.py")
    assert glob_regex("sentiment/**/*").match("sentiment/predict_client.py")
    assert glob_regex("**/*.py").match("setup.py") and glob_regex("**/*.py").match("a/b/c.py")
    assert not glob_regex("train_svc/**/*").match("train_svc_old/x.py")
    assert glob_regex("tests/test_train*.py").match("tests/test_train_svc.py")
    assert not glob_regex("tests/test_train*.py").match("tests/deploy/test_train.py"), "`*` stops at `/`"
    assert glob_regex("{Dockerfile,.dockerignore}").match(".dockerignore")
    assert not glob_regex("Dockerfile").match("Dockerfile.dev")


def test_rule_conditions_are_evaluated_for_a_merge_request_pipeline() -> None:
    assert evaluate_if('$CI_PIPELINE_SOURCE == "merge_request_event"', MERGE_REQUEST)
    assert not evaluate_if('$CI_PIPELINE_SOURCE != "merge_request_event"', MERGE_REQUEST)
    assert not evaluate_if("$CI_COMMIT_TAG =~ /^v\\d+\\.\\d+\\.\\d+$/", MERGE_REQUEST)
    assert not evaluate_if("$CI_COMMIT_BRANCH == $CI_DEFAULT_BRANCH", MERGE_REQUEST)
    assert evaluate_if("$CI_COMMIT_TAG =~ /^v\\d+/", {"CI_COMMIT_TAG": "v1.2.3"})
    assert evaluate_if('$A && $B == "x" || $C', {"C": "1"}) and not evaluate_if("$A && $B", {"A": "1"})
    assert merge_request_jobs(["README.md"]) == {"manifests"}, "docs only: the README's deploy commands"


def test_every_changes_glob_names_files_that_exist() -> None:
    """A path that moved (model_svc/client.py, train_svc/layers.py) leaves a rule that never fires."""
    files = repository_files()
    for name, job in ci_jobs().items():
        for rule in resolved(job).get("rules", []):
            for glob in change_globs(rule):
                assert any(glob_regex(glob).match(path) for path in files), f"{name}: {glob} matches no file"


def test_a_merge_request_runs_every_test_module_that_imports_a_file_it_changes() -> None:
    """Imports followed through the repository's own modules, so a test that loads a model (its Keras layer in
    sentiment/ml) or calls the Predict client runs when either changes."""
    files = repository_files()
    tests = [
        p for p in files if p.startswith("tests/") and Path(p).name.startswith("test_") and p.endswith(".py")
    ]
    imported = {test: imported_files(test) for test in tests}
    sources = [p for p in files if p.endswith(".py") and p.split("/")[0] in {*LOCAL_PACKAGES, "scripts"}]
    for source in sources:
        needed = {test for test in tests if source in imported[test]}
        missing = needed - merge_request_tests([source])
        assert not missing, (
            f"a merge request that changes {source} runs {sorted(merge_request_jobs([source]))}, not {sorted(missing)}"
        )


def test_the_keras_layers_and_the_predict_client_run_the_model_and_client_tests() -> None:
    for moved in ("sentiment/ml/layers.py", "sentiment/predict_client.py"):
        assert (REPO / moved).is_file(), moved
        run_tests = merge_request_tests([moved])
        for test in ("tests/test_model_svc.py", "tests/test_model_svc_reload.py", "tests/test_client.py"):
            assert test in run_tests, f"{moved}: {test} does not run"
        assert "tests/test_stream_pipeline.py" in run_tests and "test" in merge_request_jobs([moved])
    assert "tests/test_model_svc.py" in merge_request_tests(["model_svc/model.py"])
    assert "tests/test_stream_e2e.py" in merge_request_tests(["model_svc/server.py"])
    assert "tests/deploy/test_images.py" in merge_request_tests(["Dockerfile"])
