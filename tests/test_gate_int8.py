"""Where ``benchmarks/gate_int8.py --ship`` leaves an int8 variant: shipped with its gate when
it passes, and no stale variant left in the package when it does not."""

from __future__ import annotations

import sys
from pathlib import Path

import onnx
from onnx import TensorProto, helper

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import gate_int8
from napari_virtual_st import precision

FP32_SHA = "ab" * 32


def _gate(median_r: float) -> precision.PrecisionGate:
    return precision.PrecisionGate(
        fp32_sha256=FP32_SHA,
        held_out="synthetic",
        n_tiles=4,
        median_gene_r=median_r,
        min_gene_r=0.99,
    )


def _variant(path: Path, made_from: str = FP32_SHA) -> Path:
    """A one-node graph standing for an int8 variant (synthetic), made from ``made_from``."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    model = helper.make_model(graph)
    entry = model.metadata_props.add()
    entry.key, entry.value = precision.META_INT8_OF, made_from
    onnx.save_model(model, str(path))
    return path


def test_a_variant_that_no_longer_passes_withdraws_the_one_shipped_before(tmp_path: Path) -> None:
    (tmp_path / "int8").mkdir()
    shipped = _variant(tmp_path / "int8" / "m.onnx", made_from="cd" * 32)
    out = _variant(tmp_path / "new.onnx")
    assert gate_int8.place_variant(out, _gate(0.98), shipped, ships=False) is None
    assert not shipped.exists()
    assert out.exists()  # the candidate stays in the work folder, with the JSON record


def test_a_passing_variant_replaces_the_shipped_one_and_carries_its_gate(tmp_path: Path) -> None:
    ship_dir = tmp_path / "int8"
    ship_dir.mkdir()
    stale = _variant(ship_dir / "m.onnx", made_from="cd" * 32)
    out = _variant(tmp_path / "new.onnx")
    assert gate_int8.place_variant(out, _gate(0.995), stale, ships=True) == stale
    meta = {p.key: p.value for p in onnx.load(str(stale)).metadata_props}
    assert meta[precision.META_INT8_OF] == FP32_SHA
    recorded = precision.recorded_gate({k.removeprefix("vst."): v for k, v in meta.items()})
    assert recorded == _gate(0.995)
    assert not out.exists()
