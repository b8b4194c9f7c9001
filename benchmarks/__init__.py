"""Measured figures: training, predict and stream benchmarks (`make bench`)."""
