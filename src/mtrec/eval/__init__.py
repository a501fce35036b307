"""Evaluation: ranks and top-k (the one ranking module), rating errors and ranking metrics, and baselines."""
