"""PredictService: serves a Keras sentiment model from memory with dynamic batching and hot reload.

Where things are: `__main__` (config, logging, run until SIGTERM), `config` (ModelConfig from the
environment), `server` (the grpc.aio server and everything it owns, on one AsyncExitStack), `servicer`
(protos <-> domain; errors mapped by `sentiment.rpc.map_errors`). Domain modules, no gRPC: `inference`
(what is admitted: text and batch sizes; the batcher), `batcher` (dynamic batching on one inference thread,
deadlines, overload), `model` (the loaded Keras model, its graph and XLA programs; thresholds are applied in
`LoadedModel.predict_texts`), `fused` (the serving graph),
`reload` (polls models/CURRENT; a bundle is verified in `sentiment.bundle` before it is loaded), `metrics`.
"""
