"""Fixtures for the stream tests."""
