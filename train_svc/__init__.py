"""TrainService: trains Word2Vec + Keras LSTM sentiment models and publishes versioned bundles."""
