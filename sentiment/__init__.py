"""Shared library of the tweet sentiment services: text pipeline, dataset reader, model bundle, artifact store."""

__version__ = "0.1.0"
