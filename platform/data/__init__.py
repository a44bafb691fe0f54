"""Datasets, generated data and batching."""
