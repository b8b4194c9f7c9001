"""What a prediction is, on both sides of the wire: model_svc computes it, the Predict client returns it."""

from __future__ import annotations

from dataclasses import dataclass

LABELS = ("NEGATIVE", "NEUTRAL", "POSITIVE")


@dataclass(frozen=True)
class Prediction:
    """One text's result: its label, the score (probability of POSITIVE, 0..1) and the model version
    that computed it."""

    label: str
    score: float
    model_version: str
