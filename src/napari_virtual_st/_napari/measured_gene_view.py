"""The Measured ST per-gene view: the agreement table (sortable by any score), and for the
gene chosen in it a scatter plot of predicted against measured and the two maps, the
measured values beside (or over) the predicted ones."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import CheckBox
from napari.utils.notifications import show_error
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QAbstractItemView, QTableWidget, QTableWidgetItem

from napari_virtual_st._napari import layers as vst_layers
from napari_virtual_st._napari import measured_layers as ml
from napari_virtual_st._napari.measured_panel import MeasuredPanel, MeasuredSession
from napari_virtual_st._napari.scatter_plot import ScatterPlot
from napari_virtual_st._napari.views import views_of
from napari_virtual_st.align import Transform
from napari_virtual_st.compare import Comparison
from napari_virtual_st.display import clamp_to_target
from napari_virtual_st.errors import VirtualSTError
from napari_virtual_st.measured import MeasuredST
from napari_virtual_st.store_view import StoreView

if TYPE_CHECKING:
    from napari.layers import Layer

TABLE_COLUMNS = ("Gene", "Pearson", "Spearman", "SSIM", "Spots")
#: Gap between the predicted and the side-by-side measured values, as a share of the width.
SIDE_BY_SIDE_GAP = 0.08


class _NumberItem(QTableWidgetItem):
    """A table cell that sorts by its number (NaN below every number)."""

    def __init__(self, value: float, text: str) -> None:
        super().__init__(text)
        self.number = float(value)
        self.setTextAlignment(int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter))

    def __lt__(self, other: QTableWidgetItem) -> bool:
        if isinstance(other, _NumberItem):
            a = -math.inf if math.isnan(self.number) else self.number
            b = -math.inf if math.isnan(other.number) else other.number
            return a < b
        return super().__lt__(other)


def fmt(value: object, digits: int = 3) -> str:
    """A score to show: ``digits`` decimals, or a dash when it is not a finite number."""
    return f"{value:.{digits}f}" if ml.is_finite_number(value) else "–"


def _table() -> QTableWidget:
    table = QTableWidget(0, len(TABLE_COLUMNS))
    table.setHorizontalHeaderLabels(TABLE_COLUMNS)
    table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
    table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
    table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
    header = table.verticalHeader()
    if header is not None:  # a QTableWidget always has one; Qt's stubs allow None
        header.setVisible(False)  # no row numbers
    table.setMinimumHeight(200)
    return table


class GeneView(MeasuredPanel):
    """The comparison's table, and one gene's scatter plot and maps.

    Parameters
    ----------
    session
        The state shared with the other panels.
    """

    def __init__(self, session: MeasuredSession) -> None:
        super().__init__(session)
        self._gene: str | None = None
        self._predicted_layers: list[Layer] = []
        self.side_by_side = CheckBox(text="Measured values beside the predicted", value=True)
        self.append(self.side_by_side)
        self.table = _table()
        self.scatter = ScatterPlot()
        self.native.layout().addWidget(self.table)
        self.native.layout().addWidget(self.scatter)
        self.side_by_side.changed.connect(self._on_side_by_side)
        self.table.itemSelectionChanged.connect(self._on_table_selection)

    # -- the table ---------------------------------------------------------------------------
    def show_comparison(self, comparison: Comparison) -> None:
        """Fill the table (best Pearson first) and choose its first gene."""
        table = self.table
        table.setSortingEnabled(False)
        table.clearContents()
        rows = comparison.sorted_by("pearson")
        table.setRowCount(len(rows))
        for i, score in enumerate(rows):
            table.setItem(i, 0, QTableWidgetItem(score.gene))
            for j, value in enumerate((score.pearson, score.spearman, score.ssim), start=1):
                table.setItem(i, j, _NumberItem(value, fmt(value)))
            table.setItem(i, 4, _NumberItem(comparison.n_spots, f"{comparison.n_spots:,}"))
        table.setSortingEnabled(True)
        table.sortItems(1, Qt.SortOrder.DescendingOrder)
        table.resizeColumnsToContents()
        if table.rowCount():
            table.selectRow(0)

    def table_rows(self) -> list[tuple[str, float, float, float, int]]:
        """The table as shown (display order): gene, Pearson, Spearman, SSIM, spots."""
        out: list[tuple[str, float, float, float, int]] = []
        for i in range(self.table.rowCount()):
            gene = self.table.item(i, 0)
            cells = [self.table.item(i, j) for j in range(1, 5)]
            assert gene is not None  # every row is filled (show_comparison)
            pearson, spearman, ssim, spots = (
                c.number for c in cells if isinstance(c, _NumberItem)
            )
            out.append((gene.text(), pearson, spearman, ssim, int(spots)))
        return out

    def _on_table_selection(self) -> None:
        selection = self.table.selectionModel()
        assert selection is not None  # a QTableWidget always has one
        rows = selection.selectedRows()
        if rows:
            item = self.table.item(rows[0].row(), 0)
            if item is not None:
                self.show_gene(item.text())

    # -- one gene ----------------------------------------------------------------------------
    def show_gene(self, gene: str) -> None:
        """Scatter plot of predicted vs measured, and both maps, for one compared gene."""
        session = self.session
        comparison, measured, transform = session.comparison, session.measured, session.transform
        store_path = session.store_path()
        if comparison is None or measured is None or transform is None or store_path is None:
            return
        names = [g.gene for g in comparison.genes]
        if gene not in names:
            show_error(f"{gene} was not compared (it is not in both the model and the data)")
            return
        self._gene = gene
        k = names.index(gene)
        score = comparison.genes[k]
        # values the model's target cannot take (a negative log1p) are drawn at its floor;
        # the scores are of the model's own values
        predicted, clamped = clamp_to_target(
            comparison.predicted[:, k], views_of(self.session.viewer).get(store_path).target
        )
        self._draw_scatter(gene, comparison.measured[:, k], predicted, score.pearson, clamped)
        try:
            self._show_maps(gene, store_path, measured, transform)
        except VirtualSTError as exc:
            show_error(str(exc))

    def _draw_scatter(
        self,
        gene: str,
        measured: np.ndarray,
        predicted: np.ndarray,
        pearson: float,
        clamped: int = 0,
    ) -> None:
        title = f"{gene}: Pearson {fmt(pearson, 2)}, {len(measured)} spots"
        if clamped:
            title += f"; {clamped} predicted below 0 drawn at 0"
        self.scatter.set_points(
            measured,
            predicted,
            title=title,
            x_label="measured (log1p CP10k)",
            y_label="predicted",
        )

    def scatter_xy(self) -> np.ndarray:
        """``(n, 2)`` the scatter plot's points (measured, predicted)."""
        return self.scatter.points()

    def _show_maps(
        self, gene: str, store_path: Path, measured: MeasuredST, transform: Transform
    ) -> None:
        view = views_of(self.session.viewer).get(store_path)
        predicted = self._show_predicted(gene, view)
        # the measured values, by the same rule, beside them
        session = self.session
        yx = ml.spots_yx_um(measured, transform, session.mpp())
        geometry = ml.value_geometry(ml.lattice_kind(measured), measured.array_rc, yx)
        columns = session.columns if measured is session.columns_of else None
        values = ml.measured_values(measured, gene, session.library, columns=columns)
        session.remove_role("measured-values")
        data = ml.measured_value_layer_data(measured, gene, values, yx, geometry=geometry)
        layer = vst_layers.add_layer(session.viewer, data)
        layer.metadata = {
            **layer.metadata,
            "vst": {**vst_layers.vst_meta(layer), "base": list(layer.translate)},
        }
        self._place_side_by_side(layer, view)
        vst_layers.show_colorbar(layer, force=True)  # two maps: both scales on screen
        if predicted is not None:
            vst_layers.show_colorbar(predicted, force=True)

    def _show_predicted(self, gene: str, view: StoreView) -> Layer | None:
        """The predicted values, placed as the Gene browser places them (earlier genes'
        heatmaps removed)."""
        viewer = self.session.viewer
        for layer in self._predicted_layers:
            meta = vst_layers.vst_meta(layer)
            if (
                layer in viewer.layers
                and meta.get("role") == "heatmap"
                and meta.get("gene") != gene
            ):
                viewer.layers.remove(layer)
        if view.geometry is not None:
            predicted = vst_layers.show_heatmap(viewer, view, gene)
        else:
            predicted = vst_layers.show_spots(viewer, view, gene)
            vst_layers.colour_spots(predicted, view, gene)
            predicted.visible = True
        self._predicted_layers = [predicted] if predicted is not None else []
        return predicted

    # -- side by side ------------------------------------------------------------------------
    def _shift_um(self, view: StoreView) -> tuple[float, float]:
        if not self.side_by_side.value:
            return (0.0, 0.0)
        yx = view.yx_um
        if not len(yx):
            return (0.0, 0.0)
        # the measured values start right of the slide (or of the predicted spots)
        left = float(yx[:, 1].min()) - view.spot_diameter_um / 2
        right = float(yx[:, 1].max()) + view.spot_diameter_um / 2
        slide = self.session.slide.value
        if slide is not None and slide in self.session.viewer.layers:
            right = max(right, float(np.asarray(slide.extent.world)[1, -1]))
        return (0.0, right - left + SIDE_BY_SIDE_GAP * (right - left))

    def _place_side_by_side(self, layer: Layer, view: StoreView) -> None:
        base = np.asarray(vst_layers.vst_meta(layer).get("base", layer.translate), np.float64)
        layer.translate = tuple(base + np.asarray(self._shift_um(view)))

    def _on_side_by_side(self, _value: Any = None) -> None:
        layer = self.session.layer("measured-values")
        store_path = self.session.store_path()
        if layer is not None and store_path is not None:
            self._place_side_by_side(layer, views_of(self.session.viewer).get(store_path))

    def measured_shift_um(self) -> tuple[float, float]:
        """How far the measured values layer is moved from the spots (side by side)."""
        store_path = self.session.store_path()
        if store_path is None:
            return (0.0, 0.0)
        return self._shift_um(views_of(self.session.viewer).get(store_path))
