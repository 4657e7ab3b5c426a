"""One registry of prediction views per napari viewer.

Every viewer gets its own :class:`~napari_virtual_st.store_view.StoreViews`, made on first
use, emptied when the viewer's last layer goes (closing a viewer removes its layers first)
and dropped with the viewer (held by a weak reference to it), so two viewers in one process
never see each other's predictions.

A napari reader is not given the viewer it reads for, so the reader hands the view it read
to :func:`hand_over`; the first viewer that shows a layer of that store takes it (when the
layer is inserted, or on its first lookup), and every other viewer showing the reader's
layers of that store reads its own.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from napari_virtual_st._napari.layer_views import unproxied
from napari_virtual_st.errors import VirtualSTError
from napari_virtual_st.store_view import StoreView, StoreViews

if TYPE_CHECKING:
    import napari

    from napari_virtual_st._napari.layers import LayerDataTuple

#: Views read by the reader and not yet taken by a viewer, by resolved store path.
_HANDED_OVER: OrderedDict[str, StoreView] = OrderedDict()
#: At most this many views wait for a viewer (a reader used without one never fills memory).
MAX_HANDED_OVER = 4
#: The registry of each viewer (gone with its viewer).
_REGISTRIES: weakref.WeakKeyDictionary[napari.Viewer, ViewerViews] = weakref.WeakKeyDictionary()


class ViewerViews(StoreViews):
    """The prediction views of one viewer; takes the reader's views of its own layers.

    Parameters
    ----------
    viewer
        The viewer (held weakly).
    """

    def __init__(self, viewer: napari.Viewer) -> None:
        super().__init__()
        self._viewer = weakref.ref(viewer)
        viewer.layers.events.inserted.connect(self._on_inserted)
        viewer.layers.events.removed.connect(self._on_removed)

    def lookup(self, path: str | Path) -> StoreView | None:
        """The registered view of a store; else, when this viewer shows layers the reader
        made of that store, the view the reader read (or, when another viewer took that
        one, the store read again). Never reads a store this viewer only runs into."""
        view = super().lookup(path)
        if view is None and self._opened_here(path):
            view = _take(path) or _read(path)
            if view is not None:  # (the caller is asking: no one to tell)
                self._views[_resolved(path)] = view
        return view

    def clear(self) -> None:
        """Drop every view (the viewer's last layer went, e.g. the viewer closed)."""
        self._views.clear()

    def _opened_here(self, path: str | Path) -> bool:
        viewer = self._viewer()
        if viewer is None:
            return False
        key = _resolved(path)
        return any(
            (store := _store_of(layer, opened=True)) is not None and _resolved(store) == key
            for layer in viewer.layers
        )

    def _on_removed(self, _event: Any = None) -> None:
        viewer = self._viewer()
        if viewer is None or len(viewer.layers) == 0:
            self.clear()

    def _on_inserted(self, event: Any) -> None:
        store = _store_of(getattr(event, "value", None), opened=True)
        if store is None or super().lookup(store) is not None:
            return
        view = _take(store)
        if view is not None:
            self.register(view)


def views_of(viewer: napari.Viewer) -> ViewerViews:
    """The prediction views of ``viewer`` (made on first use).

    Parameters
    ----------
    viewer
        A napari viewer.
    """
    viewer = unproxied(viewer)  # (each panel docked from napari's menu gets its own proxy)
    views = _REGISTRIES.get(viewer)
    if views is None:
        views = _REGISTRIES[viewer] = ViewerViews(viewer)
    return views


def hand_over(view: StoreView) -> StoreView:
    """Keep a view the reader read until the viewer showing its layers takes it."""
    key = _resolved(view.path)
    _HANDED_OVER.pop(key, None)
    _HANDED_OVER[key] = view
    while len(_HANDED_OVER) > MAX_HANDED_OVER:
        _HANDED_OVER.popitem(last=False)
    return view


def _take(path: str | Path) -> StoreView | None:
    return _HANDED_OVER.pop(_resolved(path), None)


def mark_opened(layers: list[LayerDataTuple]) -> list[LayerDataTuple]:
    """Say in each layer's ``metadata["vst"]`` that the reader made it of a store on disk
    (a viewer showing it may read that store; a run's layers it must not)."""
    for _data, kwargs, _kind in layers:
        meta = kwargs.get("metadata", {}).get("vst")
        if isinstance(meta, dict) and meta.get("store"):
            meta["opened"] = True
    return layers


def _store_of(layer: Any, *, opened: bool) -> str | None:
    """The store a plugin layer shows (only one the reader made, when ``opened``)."""
    metadata = getattr(layer, "metadata", None)
    meta = metadata.get("vst") if isinstance(metadata, dict) else None
    if not isinstance(meta, dict) or (opened and not meta.get("opened")):
        return None
    store = meta.get("store")
    return str(store) if store else None


def _read(path: str | Path) -> StoreView | None:
    """The store read again; ``None`` while it is gone (e.g. a run is overwriting it)."""
    try:
        return StoreView.open(path)
    except (VirtualSTError, OSError):
        return None


def _resolved(path: str | Path) -> str:
    return str(Path(path).resolve())
