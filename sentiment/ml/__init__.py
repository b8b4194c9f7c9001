"""The Keras side of the shared library: imported by train_svc and model_svc only (the stream image has no
TensorFlow, and does not carry this package)."""
