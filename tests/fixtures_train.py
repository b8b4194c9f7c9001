"""Fixtures for the train tests."""
