"""Slide backends: one file per library, all behind :class:`SlideBackend`."""

from __future__ import annotations

from napari_virtual_st._backends.base import SlideBackend, plausible_mpp

__all__ = ["SlideBackend", "plausible_mpp"]
