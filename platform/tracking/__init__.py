"""Tracking in MLflow: the client and its experiments (``tracker``), a training run tracked from
Ray Train (``runs``, ``callback``), its logged model, dataset inputs and system metrics."""
