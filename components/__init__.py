"""Kubeflow Pipelines components of iranker: thin shells over `iranker.pipeline` step functions."""
