"""Stem-style conditional diffusion model (mean and uncertainty)."""
