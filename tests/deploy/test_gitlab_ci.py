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
