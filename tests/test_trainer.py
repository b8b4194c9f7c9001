"""The training recipe on generated tweets: it learns, and the bundle it writes verifies."""

from __future__ import annotations

import json
from pathlib import Path

from sentiment.bundle import MANIFEST_FILE, read_local_bundle


def test_tiny_model_learns_and_bundle_verifies(tiny_bundle_dir: Path) -> None:
    manifest = json.loads((tiny_bundle_dir / MANIFEST_FILE).read_text())
    assert manifest["metrics"]["accuracy"] >= 0.85, manifest["metrics"]
    bundle = read_local_bundle(tiny_bundle_dir, "v1")
    assert bundle.preprocessing.sequence_length == 30
    assert len(bundle.vocabulary) > 20
