"""Training parameters: the recipe's defaults and the validation of a caller's overrides.

`TrainParams` mirrors the proto's `TrainParams` field for field (callers may override them per job);
`Recipe` holds the domain-only knobs of the recipe, fixed per release and recorded in each manifest.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from sentiment.errors import InvalidInput


@dataclass(frozen=True)
class TrainParams:
    """The per-job knobs (proto `sentiment.v1.TrainParams`). 0 in an override means "the default".

    Defaults are measured on the 136k-tweet Sentiment140 sample (benchmarks/README.md): 40 ids cover
    99.9% of tweets once tokenised (padding is masked and batches are cut by length, so the width costs
    nothing); a low Word2Vec min_count keeps rare words in the vocabulary, and fine-tuning the embedding
    gives them a useful vector.
    """

    max_rows: int = 0  # 0: every row of the dataset
    epochs: int = 8
    batch_size: int = 1024
    sequence_length: int = 40
    embedding_dim: int = 100
    w2v_epochs: int = 10
    w2v_min_count: int = 2
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


@dataclass(frozen=True)
class Recipe:
    """Domain-only knobs of the recipe (not in the proto); each bundle's manifest records them.

    The embedding starts as the Word2Vec vectors. Measured on a 40k-tweet subsample (benchmarks/README.md, rows 2-3), keeping
    it frozen for a warm-up before fine-tuning lost to fine-tuning from the first step, so
    `frozen_epochs` defaults to 0; with `frozen_epochs` > 0 the rest trains at `fine_tune_lr` after it.
    """

    w2v_window: int = 7
    w2v_workers: int = 1  # gensim is only deterministic with one worker thread
    w2v_max_vocabulary: int = 50_000  # raises min_count on large corpora (1.6M tweets) to bound the model
    # SpatialDropout1D drops whole embedding channels; measured better and faster than the reference's
    # Dropout 0.5 once the embedding is 100-d (benchmarks/README.md, row 10).
    spatial_dropout: float = 0.3
    dropout: float = 0.0
    learning_rate: float = 1e-3
    frozen_epochs: int = 0
    fine_tune_lr: float = 1e-3
    bidirectional: bool = False
    # A linear model over hashed words and word pairs beside the LSTM (sentiment.ml.layers.NGramLinear), its
    # logit added to the LSTM's; 0 turns it off. 2**20 weights: 4 MB; the sample's ~370k distinct word pairs
    # share ~310k buckets.
    ngram_buckets: int = 1 << 20
    early_stopping_patience: int = 2
    length_bucketing: bool = True  # batches of similar-length tweets, cut to their longest

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


DEFAULT_RECIPE = Recipe()
