"""DVC + MLflow experiment pipeline for Keras recurrent networks."""

__version__ = "0.1.0"
