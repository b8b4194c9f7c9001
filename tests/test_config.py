"""Configuration seams: renamed variables keep working, with a warning that names the new one."""

from __future__ import annotations

import pytest

from model_svc.config import RENAMED, ModelConfig
from sentiment.errors import ConfigError


def test_old_variable_names_still_configure_model_svc_with_a_future_warning() -> None:
    old = {"STORE_URI": "/tmp/s", "BATCH_MAX_SIZE": "64", "BATCH_MAX_WAIT_S": "0.01", "MAX_BATCH_TEXTS": "32"}
    with pytest.warns(FutureWarning) as warned:
        config = ModelConfig.from_env({**old, "QUEUE_MAX_TEXTS": "64"})
    assert (config.inference_batch_max_texts, config.inference_batch_max_wait_s) == (64, 0.01)
    assert config.predict_batch_max_texts == 32
    messages = sorted(str(w.message) for w in warned)
    assert messages == sorted(f"{o} is deprecated; set {n} instead" for o, n in RENAMED.items())


def test_a_new_name_wins_over_its_old_one_and_errors_name_what_was_read() -> None:
    config = ModelConfig.from_env(
        {"STORE_URI": "/tmp/s", "INFERENCE_BATCH_MAX_TEXTS": "128", "BATCH_MAX_SIZE": "64"}
    )
    assert config.inference_batch_max_texts == 128
    with pytest.raises(ConfigError, match="INFERENCE_BATCH_MAX_TEXTS='lots'"):
        ModelConfig.from_env({"STORE_URI": "/tmp/s", "INFERENCE_BATCH_MAX_TEXTS": "lots"})
    with pytest.warns(FutureWarning), pytest.raises(ConfigError, match="BATCH_MAX_SIZE='lots'"):
        ModelConfig.from_env({"STORE_URI": "/tmp/s", "BATCH_MAX_SIZE": "lots"})


def test_xla_max_rows_is_0_or_a_power_of_two() -> None:
    assert ModelConfig.from_env({"STORE_URI": "/tmp/s"}).xla_max_rows == 32
    for value in ("0", "1", "8", "64"):
        assert ModelConfig.from_env({"STORE_URI": "/tmp/s", "XLA_MAX_ROWS": value}).xla_max_rows == int(value)
    for value in ("3", "24"):
        with pytest.raises(ConfigError, match=f"XLA_MAX_ROWS={value} must be 0 or a power of two"):
            ModelConfig.from_env({"STORE_URI": "/tmp/s", "XLA_MAX_ROWS": value})
    with pytest.raises(ConfigError, match="XLA_MAX_ROWS"):
        ModelConfig.from_env({"STORE_URI": "/tmp/s", "XLA_MAX_ROWS": "-1"})
