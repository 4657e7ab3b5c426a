"""One exception family, with messages written for the person at the microscope.

The CLI prints ``str(error)`` on one line and exits non-zero; the plugin shows it as a
notification. Nothing here should ever need a traceback to be understood.
"""

from __future__ import annotations


class VirtualSTError(Exception):
    """Base class of every error the engine raises on purpose."""


class SlideError(VirtualSTError):
    """A slide file cannot be opened or read (missing, corrupt, truncated, unsupported)."""


class MissingResolutionError(SlideError):
    """The slide does not say how many micrometres a pixel is, and no override was given."""


class ParameterError(VirtualSTError, ValueError):
    """A parameter is out of its valid range."""


class ModelError(VirtualSTError):
    """An ONNX model is missing, unreadable, or does not follow the model contract."""


class StoreError(VirtualSTError):
    """A prediction store cannot be created, opened or resumed."""


class StoreMismatchError(StoreError):
    """An existing store was made from a different slide, model or grid."""


class CancelledError(VirtualSTError):
    """A long operation was cancelled by the user; finished work is kept."""
