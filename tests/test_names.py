"""Names from outside never become paths outside their folder: property-based checks of every join."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sentiment import bundle
from sentiment.errors import InvalidInput
from sentiment.names import check_job_id, check_name, check_version, child_path, remove_tree
from sentiment.store import LocalStore, check_key

# Strings rich in what attacks paths: dots, slashes, NUL, backslashes, '~', unicode dots and spaces.
HOSTILE = st.text(alphabet=st.sampled_from(list("./\\\x00~ -_aZ9:\u2024\uff0e\u00e9")), max_size=40)
NAMES = st.one_of(st.text(max_size=300), HOSTILE)
VALID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def test_the_names_the_attack_used_are_refused() -> None:
    for bad in [
        "../../../etc",
        "../rel/victim",
        "CURRENT",
        "v1\x00x",
        "a" * 300,
        "",
        ".",
        "..",
        "a/b",
        "..a",
    ]:
        with pytest.raises(InvalidInput):
            check_version(bad)
    assert check_version("20261128-153012-a1b2c3") == "20261128-153012-a1b2c3"
    assert check_version("v1") == "v1"
    assert check_job_id("job-20261128-153012-a1b2c3d4") == "job-20261128-153012-a1b2c3d4"
    with pytest.raises(InvalidInput):
        check_job_id("job-../../x")


@settings(max_examples=400, deadline=None)
@given(NAMES)
def test_a_checked_name_is_one_plain_segment_inside_its_folder(value: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        try:
            name = check_name(value)
        except InvalidInput as exc:
            assert len(str(exc)) < 200  # short and printable, whatever came in
            with pytest.raises(InvalidInput):
                child_path(root, value)
            return
        assert VALID.fullmatch(name) and ".." not in name and name != "CURRENT"
        path = child_path(root, name)
        assert path.resolve().parent == root.resolve()


@settings(max_examples=400, deadline=None)
@given(NAMES)
def test_store_keys_and_bundle_keys_never_leave_the_store(value: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = LocalStore(Path(tmp) / "store")
        for key in (value, f"models/{value}/manifest.json"):
            try:
                path = store._path(key)
            except InvalidInput:
                continue
            assert store.root.resolve() in path.parents
        try:
            key = bundle._bundle_key(value, bundle.MANIFEST_FILE)
        except InvalidInput:
            return
        assert key.split("/") == ["models", value, "manifest.json"] and check_key(key) == key


@settings(max_examples=300, deadline=None)
@given(st.lists(HOSTILE, min_size=1, max_size=3))
def test_remove_tree_never_touches_anything_outside_its_folder(parts: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        root = base / "model_dir"
        (root / "inside").mkdir(parents=True)
        sentinel = base / "outside" / "sentinel"
        sentinel.parent.mkdir()
        sentinel.write_text("keep")
        (root / "link").symlink_to(base / "outside")
        try:
            remove_tree(root, root.joinpath(*parts))
        except (ValueError, OSError):
            pass
        assert sentinel.read_text() == "keep"
        assert root.is_dir()


def test_remove_tree_removes_a_symlink_not_its_target(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "sentinel").write_text("keep")
    (root / "job-link").symlink_to(outside)
    assert remove_tree(root, root / "job-link")
    assert not (root / "job-link").exists() and (outside / "sentinel").read_text() == "keep"
    for escape in (root, root / "..", tmp_path, root / "job-link" / ".." / ".."):
        with pytest.raises(ValueError):
            remove_tree(root, escape)
    assert (outside / "sentinel").exists()
