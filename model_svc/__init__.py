"""PredictService: serves a Keras sentiment model from memory with dynamic batching and hot reload."""
