"""Shared library of the tweet sentiment services.

`text` (the one tokenizer training and serving share), `dataset` (the Sentiment140 reader and its limits),
`bundle` (the model bundle: its files, manifest and every check before a bundle is trusted), `store` (local
directory or s3://, bounded reads), `names` (the rule for names from outside and the only path joins and
deletes), `rpc` (gRPC plumbing: error -> status mapping, health, reflection, signals), `predict_client` (the
Predict client with retries), `ml` (Keras layers: train and model images only), and small helpers (`config`,
`logs`, `metrics`, `retry`, `timefmt`, `errors`, `synthetic` test data).
"""

__version__ = "0.1.0"
