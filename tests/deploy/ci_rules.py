"""Which jobs a merge request pipeline runs, and which tests they run: .gitlab-ci.yml's `rules` evaluated as GitLab
does, for a merge request that changes given files.

Rules: the first rule whose `if` holds and whose `changes` (if any) match decides; `when: never` stops the job.
An `if` is evaluated with the variables of a merge request pipeline (`$CI_PIPELINE_SOURCE` is
"merge_request_event"; no tag, no branch): the operators `==`, `!=`, `=~`, `&&`, `||` and bare `$VAR`. `changes`
globs follow GitLab (Ruby's `File.fnmatch` with FNM_PATHNAME | FNM_DOTMATCH | FNM_EXTGLOB): `*` stops at `/`,
`**/` spans folders, `{a,b}` alternates.
"""

from __future__ import annotations

import ast
import re
import shlex
from pathlib import Path
from typing import Any

from tests.deploy.dockerfile import imports, module_file
from tests.deploy.helpers import LOCAL_PACKAGES, REPO, ci_jobs, resolved

MERGE_REQUEST = {"CI_PIPELINE_SOURCE": "merge_request_event", "CI_DEFAULT_BRANCH": "main"}


def glob_regex(pattern: str) -> re.Pattern[str]:
    """A `rules: changes` glob as a regular expression over repository-relative POSIX paths."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "{":
            end = pattern.index("}", i)
            out += "(?:" + "|".join(re.escape(alt) for alt in pattern[i + 1 : end].split(",")) + ")"
            i = end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


def change_globs(rule: dict[str, Any]) -> list[str]:
    changes = rule.get("changes", [])
    return list(changes["paths"] if isinstance(changes, dict) else changes)


def evaluate_if(expression: str, variables: dict[str, str]) -> bool:
    """A rules `if` expression (the subset this pipeline uses); anything else raises, so it is not guessed."""
    if "||" in expression:
        return any(evaluate_if(part, variables) for part in expression.split("||"))
    if "&&" in expression:
        return all(evaluate_if(part, variables) for part in expression.split("&&"))
    match = re.fullmatch(r"\s*(\$\w+)\s*(?:(==|!=|=~)\s*(\S.*?))?\s*", expression)
    if not match:
        raise ValueError(f"rules if not understood: {expression!r}")
    left, operator, right = match.groups()
    value = variables.get(left[1:])
    if operator is None:
        return bool(value)
    if operator == "=~":
        regex = re.fullmatch(r"/(.*)/", right)
        if not regex:
            raise ValueError(f"=~ needs a /regex/: {expression!r}")
        return value is not None and re.search(regex.group(1), value) is not None
    other = variables.get(right[1:]) if right.startswith("$") else ast.literal_eval(right)
    return (value == other) == (operator == "==")


def runs_on_merge_request(job: dict[str, Any], changed: list[str]) -> bool:
    """Whether a merge request that changes exactly `changed` runs the (resolved) job."""
    if "rules" not in job:
        return True
    for rule in job["rules"]:
        if "if" in rule and not evaluate_if(rule["if"], MERGE_REQUEST):
            continue
        globs = change_globs(rule)
        if globs and not any(glob_regex(g).match(path) for g in globs for path in changed):
            continue
        return rule.get("when", "on_success") != "never"
    return False


def merge_request_jobs(changed: list[str]) -> set[str]:
    return {name for name, job in ci_jobs().items() if runs_on_merge_request(resolved(job), changed)}


def pytest_targets(job: dict[str, Any]) -> list[str] | None:
    """The paths a job hands pytest, as written (globs in TEST_PATHS); [] for the whole suite; None: no tests."""
    for line in job.get("script", []):
        if "make test" not in line:
            continue
        words = shlex.split(line.split("make test")[0])
        addopts = [w.split("=", 1)[1] for w in words if w.startswith("PYTEST_ADDOPTS=")]
        if not addopts:
            return []
        if addopts[0] == "$*":  # `set -- $TEST_PATHS; PYTEST_ADDOPTS="$*" make test`
            return str(job["variables"]["TEST_PATHS"]).split()
        return addopts[0].split()
    return None


def collected_modules(targets: list[str]) -> set[str]:
    """The test modules pytest collects from the targets ([]: its testpaths, the whole tests/ folder)."""
    found: set[Path] = set()
    for target in targets or ["tests"]:
        for path in sorted(REPO.glob(target)) if any(c in target for c in "*?[") else [REPO / target]:
            found.update(path.rglob("test_*.py") if path.is_dir() else [path])
    return {p.relative_to(REPO).as_posix() for p in found if p.name.startswith("test_")}


def merge_request_tests(changed: list[str]) -> set[str]:
    """Every test module some job of that merge request pipeline runs."""
    tests: set[str] = set()
    for name in merge_request_jobs(changed):
        targets = pytest_targets(resolved(ci_jobs()[name]))
        if targets is not None:
            tests |= collected_modules(targets)
    return tests


def imported_files(path: str) -> set[str]:
    """The repository modules a file imports, directly or through other repository modules (tests' helper
    modules included; conftest's plugins, which every test loads, left out)."""
    found: set[str] = set()
    pending = [path]
    while pending:
        for name in imports(REPO / pending.pop()):
            if name.split(".")[0] in {*LOCAL_PACKAGES, "tests", "scripts"}:
                module = module_file(name)
                if module and module not in found:
                    found.add(module)
                    pending.append(module)
    return found
