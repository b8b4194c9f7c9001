"""Training parameters: the recipe's defaults and the validation of a caller's overrides."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from sentiment.errors import InvalidInput


@dataclass(frozen=True)
class TrainParams:
    """The recipe (reference notebook, with its defects fixed). 0 in an override means "the default"."""

    max_rows: int = 0  # 0: every row of the dataset
    epochs: int = 8
    batch_size: int = 1024
    sequence_length: int = 50
    embedding_dim: int = 300
    w2v_epochs: int = 32
    w2v_min_count: int = 10
    lstm_units: int = 100
    seed: int = 42

    def with_overrides(self, overrides: dict[str, Any]) -> TrainParams:
        """Apply non-zero overrides; negative or absurd values raise InvalidInput naming the field."""
        known = {f.name for f in fields(self)}
        changes = {}
        for name, value in overrides.items():
            if name not in known:
                raise InvalidInput(f"unknown training parameter {name!r}")
            if not value:
                continue
            if value < 0:
                raise InvalidInput(f"params.{name} must be positive, got {value}")
            changes[name] = int(value)
        params = replace(self, **changes)
        params.validate()
        return params

    def validate(self) -> None:
        limits = {
            "epochs": 1000,
            "batch_size": 65536,
            "sequence_length": 1000,
            "embedding_dim": 1024,
            "w2v_epochs": 1000,
            "lstm_units": 2048,
        }
        for name, limit in limits.items():
            if getattr(self, name) > limit:
                raise InvalidInput(f"params.{name}={getattr(self, name)} is above the limit {limit}")
        if 0 < self.max_rows < 10:
            raise InvalidInput(f"params.max_rows={self.max_rows} is too small to split into train and test")

    def to_dict(self) -> dict[str, int]:
        return asdict(self)
