"""mtrec: multi-task recommenders in PyTorch."""

__version__ = "0.1.0"
