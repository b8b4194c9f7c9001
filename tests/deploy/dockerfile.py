"""Reading the Dockerfile as the builder does: its stages, what each image copies and what its venv installs."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
from pathlib import Path

from packaging.requirements import Requirement

from tests.deploy.helpers import REPO, run


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


def context_copies(instructions: list[str]) -> list[str]:
    """The sources of the COPY instructions that read the build context (not another stage)."""
    sources: list[str] = []
    for instruction in instructions:
        parts = instruction.split()
        if parts[0].upper() == "COPY" and not any(p.startswith("--from") for p in parts):
            sources += parts[1:-1]
    return sources


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
    """The Python files the target image holds: COPYs from the build context in its stage chain.

    A source is a folder (every .py under it), a file, or a glob (`sentiment/*.py`: the files it matches,
    as the builder expands it; a glob's `*` stops at a `/`).
    """
    stages = dockerfile_stages()
    files: list[Path] = []
    for stage in stage_chain(stages, target):
        for source in context_copies(stages[stage]):
            matches = sorted(REPO.glob(source)) if any(c in source for c in "*?[") else [REPO / source]
            for path in matches:
                files += (
                    sorted(path.rglob("*.py")) if path.is_dir() else [path] if path.suffix == ".py" else []
                )
    return files


def image_paths(target: str) -> set[str]:
    """image_sources as repository-relative POSIX paths."""
    return {p.relative_to(REPO).as_posix() for p in image_sources(target)}


def imports(path: Path) -> set[str]:
    """Dotted names a file imports, anywhere in it (function bodies too), except under `if TYPE_CHECKING:`.

    `from a.b import c` yields `a.b` and `a.b.c` (c may be a module). Relative imports are left out.
    """
    names: set[str] = set()

    class Visitor(ast.NodeVisitor):
        def visit_If(self, node: ast.If) -> None:
            if "TYPE_CHECKING" in ast.unparse(node.test):
                for child in node.orelse:
                    self.visit(child)
                return
            self.generic_visit(node)

        def visit_Import(self, node: ast.Import) -> None:
            names.update(alias.name for alias in node.names)

        def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
            if node.level == 0 and node.module:
                names.add(node.module)
                names.update(f"{node.module}.{alias.name}" for alias in node.names)

    Visitor().visit(ast.parse(path.read_text()))
    return names


def imported_modules(path: Path) -> set[str]:
    """Top-level modules a file imports (see `imports`)."""
    return {name.split(".")[0] for name in imports(path)}


def module_file(name: str) -> str | None:
    """The repository file of a dotted module name (`a/b.py` or `a/b/__init__.py`), if there is one."""
    base = name.replace(".", "/")
    for candidate in (f"{base}.py", f"{base}/__init__.py"):
        if (REPO / candidate).is_file():
            return candidate
    return None


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
