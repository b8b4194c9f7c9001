"""Names that come from outside (the store, a request, a dataset) and the only ways they become paths.

A model version or job id read from `models/CURRENT`, a manifest, a job record or a request is data. It
passes `check_version` / `check_job_id` before it names a store key or a local folder, and a local path is
built only by `child_path`, which also checks that the resolved path stays inside its folder. Deletion goes
through `remove_tree`, which refuses any path outside the folder it is given and never ignores errors.
"""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path

from sentiment.errors import InvalidInput

log = logging.getLogger(__name__)

MAX_NAME_CHARS = 128
# One path segment: starts with a letter or digit, then letters, digits, '.', '_' or '-'.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
RESERVED = frozenset({"CURRENT"})
_JOB_ID = re.compile(r"job-[0-9]{8}-[0-9]{6}-[0-9a-f]{8}")


def shown(value: str, limit: int = 48) -> str:
    """A name as an error message may quote it: ASCII, escaped, at most `limit` characters."""
    text = ascii(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_name(value: object, what: str = "name") -> str:
    """`value` if it is a safe single path segment; InvalidInput (a short, printable message) otherwise.

    Safe: a str of 1-128 characters from [A-Za-z0-9._-], starting with a letter or digit, without '..',
    and not a reserved store key (CURRENT).
    """
    if not isinstance(value, str):
        raise InvalidInput(f"{what} must be a string, got {type(value).__name__}")
    if not value:
        raise InvalidInput(f"{what} is empty")
    if len(value) > MAX_NAME_CHARS:
        raise InvalidInput(f"{what} has {len(value)} characters, more than {MAX_NAME_CHARS}")
    if _NAME.fullmatch(value) is None or ".." in value:
        raise InvalidInput(
            f"{what} {shown(value)} is not a valid name (letters, digits, '.', '_', '-'; no '..')"
        )
    if value in RESERVED:
        raise InvalidInput(f"{what} {shown(value)} is reserved")
    return value


def check_version(value: object) -> str:
    """A model version name (see `check_name`)."""
    return check_name(value, "model version")


def check_job_id(value: object) -> str:
    """A job id as `new_job_id` makes them: `job-YYYYMMDD-HHMMSS-<8 hex>`."""
    job_id = check_name(value, "job id")
    if _JOB_ID.fullmatch(job_id) is None:
        raise InvalidInput(f"job id {shown(job_id)} is not of the form job-YYYYMMDD-HHMMSS-xxxxxxxx")
    return job_id


def is_inside(root: Path, path: Path) -> bool:
    """True when `path`, resolved (symlinks followed), is strictly below `root`, resolved."""
    base = root.resolve()
    return base in path.resolve().parents


def child_path(root: Path, name: str) -> Path:
    """`root / name` for a checked single-segment `name`, verified to resolve strictly inside `root`."""
    path = root / check_name(name)
    if not is_inside(root, path):
        raise InvalidInput(f"{shown(name)} resolves outside {root}")
    return path


def remove_tree(root: Path, path: Path) -> bool:
    """Delete `path` (a folder, a file or a symlink, which is removed, not followed) when it lies strictly
    inside `root`; returns True when something was deleted.

    A path outside `root`, or `root` itself, is refused with ValueError and nothing is touched. Errors
    while deleting are raised, not ignored: a caller that may go on logs them.
    """
    base = root.resolve()
    # The parent is resolved, not the path itself: a symlink inside root is itself inside, wherever it points.
    parent = path.parent.resolve()
    if parent != base and base not in parent.parents:
        raise ValueError(f"refusing to delete {path}: not inside {root}")
    target = parent / path.name
    if path.name in ("", ".", ".."):
        raise ValueError(f"refusing to delete {path}: not a child of {root}")
    if target.is_symlink() or target.is_file():
        target.unlink()
        return True
    if target.is_dir():
        shutil.rmtree(target)
        return True
    return False
