"""Evaluation: COCO mask and box AP with the paper's baselines and diagnostics (``coco``), mask
quality at the true locations, sharding over workers, mask overlays."""
