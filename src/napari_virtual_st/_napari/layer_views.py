"""napari's views of a layer, made before the layer is added to the viewer.

When a layer is added, napari makes two views of it in that one call: the canvas visual
(vispy nodes and their shader functions; both a 2D and a 3D node for an Image layer) and the
layer-controls panel (Qt widgets). On this project's reference machine they take about 35 ms
and 30 ms of the GUI thread for an Image layer, on top of the rest of the add, and the next
canvas frame costs another ~50 ms in the same stall. :class:`LayerViews` makes each view in
an event-loop turn of its own, beforehand, and :func:`handing_over` gives them to napari when
the layer is added, so the add itself is only the rest.

napari has no public API for this: for the duration of that one add, its two factories
(``create_vispy_layer`` in ``napari._qt.qt_viewer`` and ``create_qt_layer_controls`` in
``napari._qt.layer_controls.qt_layer_controls_container``) are replaced by ones that return
the views made beforehand for that layer and make any other layer's as napari would.

One switch guards all of it: :func:`private_factories` says whether both factories are
there, as callables taking the layer first, and :data:`ENABLED` allows them at all. Where it
says no (another napari version, or switched off) this is logged once and every layer is
added through napari's public API only (``viewer.layers.append``), napari making its views
itself; the same where the viewer has no Qt window or canvas, or napari's factory fails on
the layer beforehand (logged, not shown). Views that were made but not used are closed.

A panel docked from napari's Plugins menu gets the viewer wrapped in napari's
``PublicOnlyProxy``, which warns on every private attribute access (a warning napari shows
the user) and hands out proxies that Qt does not accept as widgets. The private parts used
here and by :func:`.layers.add_layer` are reached through :func:`unproxied`, the one place
that knowingly steps past it; every other call of the plugin goes through the viewer it was
given.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import inspect
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    import napari
    from napari.layers import Layer

#: (module, factory) napari calls while adding a layer: the canvas visual, the controls.
_VISUAL_FACTORY = ("napari._qt.qt_viewer", "create_vispy_layer")
_CONTROLS_FACTORY = (
    "napari._qt.layer_controls.qt_layer_controls_container",
    "create_qt_layer_controls",
)


_T = TypeVar("_T")
_log = logging.getLogger(__name__)
#: Whether napari's private factories may be used at all (``False``: the public API only).
ENABLED = True
#: Whether the fall-back to the public API was logged already (it is logged once).
_FALLBACK_LOGGED = [False]


def unproxied(obj: _T) -> _T:
    """The napari object behind napari's ``PublicOnlyProxy`` (``obj`` itself otherwise),
    for the guarded private napari API of this module and :func:`.layers.add_layer`."""
    return getattr(obj, "__wrapped__", obj)


def _factory(where: tuple[str, str]) -> tuple[Any, Callable[..., Any]] | None:
    """napari's module and the factory it calls by that name, where both exist."""
    try:
        module = importlib.import_module(where[0])
    except ImportError:
        return None
    factory = getattr(module, where[1], None)
    return (module, factory) if callable(factory) else None


@functools.lru_cache(maxsize=8)
def _takes_a_layer(factory: Callable[..., Any]) -> bool:
    """Whether ``factory`` can be called with a layer as its first positional argument."""
    try:
        params = list(inspect.signature(factory).parameters.values())
    except (TypeError, ValueError):
        return False
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return bool(params) and (
        params[0].kind in positional or params[0].kind is inspect.Parameter.VAR_POSITIONAL
    )


@dataclass(frozen=True)
class PrivateFactories:
    """napari's two private factories, as found: (module, factory) each."""

    visual: tuple[Any, Callable[..., Any]]
    controls: tuple[Any, Callable[..., Any]]


def private_factories() -> PrivateFactories | None:
    """The one switch: napari's private factories where they can be used, else ``None``.

    ``None`` when :data:`ENABLED` is off, or either factory is missing or no longer takes
    the layer first (another napari); then the plugin adds layers through napari's public
    API only, and says so once in the log.
    """
    why = None if ENABLED else "switched off (layer_views.ENABLED)"
    visual, controls = _factory(_VISUAL_FACTORY), _factory(_CONTROLS_FACTORY)
    for where, found in ((_VISUAL_FACTORY, visual), (_CONTROLS_FACTORY, controls)):
        if why is None and found is None:
            why = f"napari has no {where[0]}.{where[1]}"
        elif why is None and found is not None and not _takes_a_layer(found[1]):
            why = f"napari's {where[0]}.{where[1]} no longer takes a layer first"
    if why is not None or visual is None or controls is None:
        _log_fall_back(why or "")
        return None
    return PrivateFactories(visual, controls)


def _log_fall_back(why: str) -> None:
    """Say once in the log why layers are added by napari's public API only."""
    if not _FALLBACK_LOGGED[0]:
        _FALLBACK_LOGGED[0] = True
        _log.info("layer views are left to napari (public API only): %s", why)


def _qt_viewer(viewer: napari.Viewer) -> Any:
    window = getattr(viewer, "window", None)
    return getattr(window, "_qt_viewer", None)


def _dynamic_controls() -> bool:
    """Whether napari makes layer controls on selection instead (an experimental setting)."""
    try:
        from napari.settings import get_settings

        return bool(get_settings().experimental.dynamic_layer_controls)
    except (ImportError, AttributeError):
        return False


class LayerViews:
    """The canvas visual and layer controls of one layer, made before it is added.

    Parameters
    ----------
    viewer
        The viewer the layer will be added to.
    layer
        The layer, not yet in the viewer.

    Notes
    -----
    Call :meth:`make_visual` and :meth:`make_controls` in event-loop turns of their own,
    then add the layer inside :func:`handing_over`; or :meth:`close` views that will not be
    used. Either view may stay unmade (``None``): napari then makes it while adding.
    """

    def __init__(self, viewer: napari.Viewer, layer: Layer) -> None:
        self.viewer = unproxied(viewer)
        self.layer = unproxied(layer)
        self.visual: Any = None
        self.controls: Any = None

    def make_visual(self) -> None:
        """Make the layer's canvas visual (as napari would while adding it)."""
        factories = private_factories()
        qt_viewer = _qt_viewer(self.viewer)
        canvas = getattr(qt_viewer, "canvas", None)
        if self.visual is not None or factories is None or canvas is None:
            return
        try:
            font_info = getattr(canvas, "font_info", None)
            kwargs = {"font_info": font_info()} if callable(font_info) else {}
            self.visual = factories.visual[1](self.layer, **kwargs)
        except Exception:  # (napari makes it while adding, as usual)
            _log.debug("no canvas visual made beforehand for %s", self.layer, exc_info=True)

    def make_controls(self) -> None:
        """Make the layer's controls panel (as napari would while adding it)."""
        factories = private_factories()
        if self.controls is not None or factories is None or _dynamic_controls():
            return
        container = getattr(_qt_viewer(self.viewer), "controls", None)
        if container is None:
            return
        try:
            controls = factories.controls[1](self.layer)
            # a child of napari's controls panel already (hidden, not in its stack): Qt
            # styles a widget when it moves under a new parent, ~10 ms here, now rather
            # than in the add
            controls.setParent(container)
        except Exception:  # (napari makes them while adding, as usual)
            _log.debug("no layer controls made beforehand for %s", self.layer, exc_info=True)
            return
        self.controls = controls

    def close(self) -> None:
        """Close the views that were made and not handed to napari."""
        visual, self.visual = self.visual, None
        controls, self.controls = self.controls, None
        if visual is not None:
            visual.close()
        if controls is not None:
            close = getattr(controls, "close", None)
            if callable(close):
                close()
            controls.deleteLater()


@contextlib.contextmanager
def handing_over(views: LayerViews | None) -> Iterator[None]:
    """While this context lasts, napari adding ``views.layer`` uses the views made for it.

    Views napari did not take by the end (it did not add the layer, or made its views some
    other way) are closed.
    """
    factories = private_factories() if views is not None else None
    if views is None or factories is None:
        yield
        if views is not None:
            views.close()
        return
    replaced: list[tuple[Any, str, Callable[..., Any]]] = []
    for where, attr, found in (
        (_VISUAL_FACTORY, "visual", factories.visual),
        (_CONTROLS_FACTORY, "controls", factories.controls),
    ):
        if getattr(views, attr) is None:
            continue
        module, original = found

        def factory(
            layer: Layer,
            *args: Any,
            _attr: str = attr,
            _original: Callable[..., Any] = original,
            **kwargs: Any,
        ) -> Any:
            made = getattr(views, _attr)
            if layer is views.layer and made is not None:
                setattr(views, _attr, None)  # (taken: napari owns it now)
                return made
            return _original(layer, *args, **kwargs)

        setattr(module, where[1], factory)
        replaced.append((module, where[1], original))
    try:
        yield
    finally:
        for module, name, original in replaced:
            setattr(module, name, original)
        views.close()
