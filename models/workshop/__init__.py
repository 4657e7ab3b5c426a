"""Shared workshop code: real training data, the evaluation protocol, baselines."""
