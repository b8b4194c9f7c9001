"""The MLServer peer's runtime: serves a model_svc bundle through model_svc's own `LoadedModel.predict_texts`.

Imported by MLServer 1.7.1 in its benchmark-only virtualenv (`make mlserver-venv`, never .venv), with the
repository root on PYTHONPATH. The model settings' `parameters.uri` names the bundle folder. Input: one
BYTES tensor of texts, shape [n]; outputs: `score` (FP32 [n]) and `label` (BYTES [n]), and the response's
model_version is the bundle's. TensorFlow's pools are sized as model_svc sizes them: intra-op threads to
the CPUs the process may use, one inter-op thread.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlserver import MLModel
from mlserver.codecs import StringCodec
from mlserver.types import InferenceRequest, InferenceResponse, ResponseOutput


class SentimentRuntime(MLModel):  # type: ignore[misc]  # mlserver is not installed where mypy runs
    """Load: verify and read the bundle, load and warm it. Predict: one model call per (batched) request."""

    async def load(self) -> bool:
        from model_svc.model import LoadedModel, configure_threads
        from sentiment.bundle import read_local_bundle
        from sentiment.config import available_cpus

        configure_threads(available_cpus(), 1)
        self._model: Any = LoadedModel(read_local_bundle(Path(self.settings.parameters.uri), "bench"))
        self._model.warm()
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        texts = StringCodec.decode_input(payload.inputs[0])
        predictions = self._model.predict_texts(texts)
        n = len(predictions)
        return InferenceResponse(
            model_name=self.name,
            model_version=self._model.version,
            outputs=[
                ResponseOutput(name="score", datatype="FP32", shape=[n], data=[p.score for p in predictions]),
                StringCodec.encode_output("label", [p.label for p in predictions]),
            ],
        )
