"""Predictor: a contract model loads and computes what it should; a broken one is refused
with a message naming the metadata key or tensor at fault."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from napari_virtual_st.contract import ModelMetadata, attach_metadata, save_model
from napari_virtual_st.errors import ModelError, ParameterError
from napari_virtual_st.predictor import Predictor, resolve_providers
from synthetic_models import (
    NOISE_SPEC,
    expected_mean_colour,
    expected_noise,
    write_mean_colour_model,
)

N_GENES = 5
TILE_PX = 32


def random_tiles(n: int, seed: int = 0, tile_px: int = TILE_PX) -> np.ndarray:
    """``n`` random uint8 RGB tiles (each with its own mean colour)."""
    return np.random.default_rng(seed).integers(0, 256, (n, tile_px, tile_px, 3), dtype=np.uint8)


def refusal(tmp_path: Path, **kwargs: Any) -> str:
    """Write a synthetic model with ``kwargs``, load it, and return the refusal message."""
    path = write_mean_colour_model(tmp_path / "broken.onnx", **kwargs)
    with pytest.raises(ModelError) as info:
        Predictor(path)
    return str(info.value)


# -- a valid model ---------------------------------------------------------------------------
def test_a_valid_model_predicts_what_numpy_computes(synthetic_model: Path) -> None:
    predictor = Predictor(synthetic_model)
    assert predictor.genes == tuple(f"SYNTH{i}" for i in range(N_GENES))
    assert predictor.info.tile_px == TILE_PX
    assert predictor.info.tile_um == 55.0
    assert predictor.info.mpp == pytest.approx(55.0 / 32)
    assert predictor.info.family == "baseline"
    assert predictor.info.name == "synthetic mean-colour model"
    assert predictor.fixed_batch_size is None
    tiles = random_tiles(9)
    result = predictor.predict(tiles)
    assert result.expression.dtype == np.float32
    assert result.expression.shape == (9, N_GENES)
    assert result.variance is None
    np.testing.assert_allclose(
        result.expression, expected_mean_colour(tiles, N_GENES), rtol=1e-5, atol=1e-5
    )


def test_the_model_hash_identifies_the_file(tmp_path: Path) -> None:
    a = Predictor(write_mean_colour_model(tmp_path / "a.onnx", seed=0))
    again = Predictor(write_mean_colour_model(tmp_path / "again.onnx", seed=0))
    other = Predictor(write_mean_colour_model(tmp_path / "b.onnx", seed=1))
    assert len(a.info.sha256) == 64
    assert a.info.sha256 == again.info.sha256
    assert a.info.sha256 != other.info.sha256


def test_variance_is_returned_when_the_model_declares_it(tmp_path: Path) -> None:
    predictor = Predictor(write_mean_colour_model(tmp_path / "v.onnx", with_variance=True))
    assert predictor.info.outputs == ("expression", "variance")
    tiles = random_tiles(4)
    result = predictor.predict(tiles)
    expected = expected_mean_colour(tiles, N_GENES)
    assert result.variance is not None
    assert result.variance.dtype == np.float32
    np.testing.assert_allclose(result.variance, expected**2, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("n_tiles", [1, 3, 4, 10])
@pytest.mark.parametrize("fixed", [1, 4])
def test_a_fixed_batch_size_model_accepts_any_number_of_tiles(
    tmp_path: Path, fixed: int, n_tiles: int
) -> None:
    path = write_mean_colour_model(
        tmp_path / "fixed.onnx", image_shape=[fixed, TILE_PX, TILE_PX, 3]
    )
    predictor = Predictor(path)
    assert predictor.fixed_batch_size == fixed
    tiles = random_tiles(n_tiles, seed=n_tiles)
    result = predictor.predict(tiles)
    assert result.expression.shape == (n_tiles, N_GENES)
    np.testing.assert_allclose(
        result.expression, expected_mean_colour(tiles, N_GENES), rtol=1e-5, atol=1e-5
    )


def test_an_empty_batch_gives_an_empty_prediction(tmp_path: Path, synthetic_model: Path) -> None:
    fixed = write_mean_colour_model(tmp_path / "fixed.onnx", image_shape=[2, TILE_PX, TILE_PX, 3])
    for path in (synthetic_model, fixed):
        result = Predictor(path).predict(np.zeros((0, TILE_PX, TILE_PX, 3), np.uint8))
        assert result.expression.shape == (0, N_GENES)


def test_declared_noise_is_deterministic_per_spot_whatever_the_batch(tmp_path: Path) -> None:
    predictor = Predictor(write_mean_colour_model(tmp_path / "noisy.onnx", with_noise=True))
    assert dict(predictor.info.extra_inputs) == {"noise": NOISE_SPEC}
    tiles = random_tiles(8)
    spots = np.arange(100, 108)
    whole = predictor.predict(tiles, spot_index=spots).expression
    expected = expected_mean_colour(tiles, N_GENES) + expected_noise(spots)
    np.testing.assert_allclose(whole, expected, rtol=1e-5, atol=1e-5)
    # the same spots in other batches, in another order, alone: the same values
    pieces = np.concatenate(
        [
            predictor.predict(tiles[5:], spot_index=spots[5:]).expression,
            predictor.predict(tiles[:1], spot_index=spots[:1]).expression,
            predictor.predict(tiles[1:5], spot_index=spots[1:5]).expression,
        ]
    )
    reordered = np.concatenate([whole[5:], whole[:1], whole[1:5]])
    np.testing.assert_allclose(pieces, reordered, rtol=1e-6, atol=1e-6)
    # the same tile at two different spots gets different noise
    same_tile = np.repeat(tiles[:1], 2, axis=0)
    two = predictor.predict(same_tile, spot_index=[1, 2]).expression
    assert not np.allclose(two[0], two[1])


def test_noise_is_per_spot_for_a_fixed_batch_size_model(tmp_path: Path) -> None:
    path = write_mean_colour_model(
        tmp_path / "noisy_fixed.onnx", with_noise=True, image_shape=[3, TILE_PX, TILE_PX, 3]
    )
    predictor = Predictor(path)
    tiles = random_tiles(7)
    spots = np.arange(20, 27)
    result = predictor.predict(tiles, spot_index=spots).expression
    expected = expected_mean_colour(tiles, N_GENES) + expected_noise(spots)
    np.testing.assert_allclose(result, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("tiles", "what"),
    [
        (np.zeros((2, TILE_PX, TILE_PX, 3), np.float32), "float32"),
        (np.zeros((2, 16, 16, 3), np.uint8), "(2, 16, 16, 3)"),
        (np.zeros((2, TILE_PX, TILE_PX, 4), np.uint8), "(2, 32, 32, 4)"),
        (np.zeros((TILE_PX, TILE_PX, 3), np.uint8), "(32, 32, 3)"),
    ],
    ids=["float-tiles", "wrong-size", "four-channels", "no-batch-axis"],
)
def test_tiles_of_the_wrong_shape_or_dtype_are_refused(
    synthetic_model: Path, tiles: np.ndarray, what: str
) -> None:
    with pytest.raises(ParameterError, match=r"uint8 of shape \(N, 32, 32, 3\)") as info:
        Predictor(synthetic_model).predict(tiles)
    assert what in str(info.value)


def test_spot_ids_must_match_the_tiles(synthetic_model: Path) -> None:
    with pytest.raises(ParameterError, match=r"one id per tile, shape \(3,\); got shape \(2,\)"):
        Predictor(synthetic_model).predict(random_tiles(3), spot_index=[0, 1])


# -- execution providers ---------------------------------------------------------------------
def test_the_predictor_reports_the_providers_it_uses(synthetic_model: Path) -> None:
    predictor = Predictor(synthetic_model)
    assert "CPUExecutionProvider" in predictor.providers
    assert set(predictor.providers) <= set(ort.get_available_providers())
    on_cpu = Predictor(synthetic_model, providers=["cpu"], intra_op_threads=1)
    assert on_cpu.providers == ["CPUExecutionProvider"]
    assert not on_cpu.on_gpu
    assert "CPUExecutionProvider" in repr(on_cpu)


def test_gpu_providers_are_preferred_when_available(monkeypatch: pytest.MonkeyPatch) -> None:
    import napari_virtual_st.predictor as predictor_module

    # listed and (as a quiet probe found) able to run
    runs = {"CUDAExecutionProvider": None, "TensorrtExecutionProvider": None}
    monkeypatch.setattr(predictor_module, "_PROBED", runs)
    all_three = ["CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"]
    monkeypatch.setattr(ort, "get_available_providers", lambda: all_three)
    assert resolve_providers() == [
        "TensorrtExecutionProvider",
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    ]
    assert resolve_providers(["cuda"]) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(
        ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"]
    )
    assert resolve_providers() == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    assert resolve_providers() == ["CPUExecutionProvider"]
    assert resolve_providers(["cpu"]) == ["CPUExecutionProvider"]


def test_an_unavailable_provider_is_refused_with_a_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with pytest.raises(ModelError, match=r"'cuda' is not available.*onnxruntime-gpu") as info:
        resolve_providers(["cuda"])
    assert "available: CPUExecutionProvider" in str(info.value)
    with pytest.raises(ModelError, match="'OpenVINOExecutionProvider' is not available"):
        resolve_providers(["OpenVINOExecutionProvider"])


def test_a_predictor_refuses_an_unavailable_provider(
    synthetic_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with pytest.raises(ModelError, match="'tensorrt' is not available"):
        Predictor(synthetic_model, providers=["tensorrt"])


def test_a_thread_count_below_one_is_refused(synthetic_model: Path) -> None:
    with pytest.raises(ParameterError, match="thread count"):
        Predictor(synthetic_model, intra_op_threads=0)


# -- refusals: metadata ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "key", ["format_version", "family", "genes", "tile_px", "tile_um", "target", "outputs"]
)
def test_a_model_missing_a_required_key_is_refused_naming_it(tmp_path: Path, key: str) -> None:
    message = refusal(tmp_path, metadata_overrides={f"vst.{key}": None})
    assert f"lacks required metadata key 'vst.{key}'" in message


def test_a_model_without_any_metadata_is_refused(tmp_path: Path) -> None:
    keys = ["format_version", "family", "genes", "tile_px", "tile_um", "target", "outputs"]
    overrides: dict[str, str | None] = {f"vst.{k}": None for k in keys}
    assert "'vst.format_version'" in refusal(tmp_path, metadata_overrides=overrides)


def test_another_contract_version_is_refused(tmp_path: Path) -> None:
    message = refusal(tmp_path, metadata_overrides={"vst.format_version": "2"})
    assert "'vst.format_version' is '2'" in message
    assert "contract version 1" in message


@pytest.mark.parametrize(
    ("genes", "expected"),
    [
        ("SYNTH0, SYNTH1", "'vst.genes' is not valid JSON"),
        ("[]", "'vst.genes' must be a non-empty JSON list"),
        ('{"SYNTH0": 0}', "'vst.genes' must be a non-empty JSON list"),
        ('["SYNTH0", 1, "SYNTH2", "SYNTH3", "SYNTH4"]', "'vst.genes' must be a non-empty"),
        ('["SYNTH0", "", "SYNTH2", "SYNTH3", "SYNTH4"]', "'vst.genes' must be a non-empty"),
        (
            '["SYNTH0", "SYNTH1", "SYNTH2", "SYNTH1", "SYNTH4"]',
            "'vst.genes' lists gene 'SYNTH1' more than once",
        ),
    ],
    ids=["not-json", "empty", "object", "number", "empty-name", "duplicate"],
)
def test_bad_gene_lists_are_refused(tmp_path: Path, genes: str, expected: str) -> None:
    assert expected in refusal(tmp_path, metadata_overrides={"vst.genes": genes})


@pytest.mark.parametrize("value", ["abc", "0", "-32", "32.5", "3e1", ""])
def test_tile_px_must_be_a_positive_integer(tmp_path: Path, value: str) -> None:
    message = refusal(tmp_path, metadata_overrides={"vst.tile_px": value})
    assert "'vst.tile_px' must be" in message
    assert repr(value) in message


@pytest.mark.parametrize("value", ["abc", "0", "-55", "nan", "inf", ""])
def test_tile_um_must_be_a_positive_number(tmp_path: Path, value: str) -> None:
    message = refusal(tmp_path, metadata_overrides={"vst.tile_um": value})
    assert "'vst.tile_um' must be" in message
    assert repr(value) in message


@pytest.mark.parametrize(
    ("outputs", "expected"),
    [
        ("expression", "'vst.outputs' is not valid JSON"),
        ('"expression"', "'vst.outputs' must be a JSON list that includes \"expression\""),
        ('["variance"]', "'vst.outputs' must be a JSON list that includes \"expression\""),
        ('["expression", "logits"]', "'vst.outputs' names unknown output 'logits'"),
        ('["expression", "variance"]', "'vst.outputs' lists 'variance', but the model has no"),
    ],
    ids=["not-json", "not-a-list", "no-expression", "unknown", "not-in-graph"],
)
def test_bad_output_lists_are_refused(tmp_path: Path, outputs: str, expected: str) -> None:
    assert expected in refusal(tmp_path, metadata_overrides={"vst.outputs": outputs})


def test_a_gene_count_different_from_the_output_width_is_refused(tmp_path: Path) -> None:
    genes = json.dumps([f"SYNTH{i}" for i in range(4)])
    message = refusal(tmp_path, metadata_overrides={"vst.genes": genes})
    assert "'vst.genes' lists 4 genes but output 'expression' has 5 values" in message


# -- refusals: the graph ---------------------------------------------------------------------
def test_a_model_without_an_image_input_is_refused(tmp_path: Path) -> None:
    message = refusal(tmp_path, image_name="pixels")
    assert "no input named 'image'" in message
    assert "pixels" in message


def test_a_float_image_input_is_refused(tmp_path: Path) -> None:
    message = refusal(tmp_path, image_dtype=TensorProto.FLOAT)
    assert "input 'image' must be uint8" in message
    assert "tensor(float)" in message


@pytest.mark.parametrize(
    "shape", [["N", TILE_PX * TILE_PX, 3], ["N", 1, TILE_PX, TILE_PX, 3]], ids=["3d", "5d"]
)
def test_an_image_input_of_the_wrong_rank_is_refused(tmp_path: Path, shape: list[Any]) -> None:
    assert "input 'image' must have 4 dimensions" in refusal(tmp_path, image_shape=shape)


def test_an_image_input_without_three_channels_is_refused(tmp_path: Path) -> None:
    message = refusal(tmp_path, image_shape=["N", TILE_PX, TILE_PX, 4])
    assert "input 'image' must have 3 channels last" in message


@pytest.mark.parametrize("shape", [["N", 16, 16, 3], ["N", TILE_PX, 16, 3], ["N", 16, TILE_PX, 3]])
def test_an_image_size_different_from_tile_px_is_refused(tmp_path: Path, shape: list[Any]) -> None:
    message = refusal(tmp_path, image_shape=shape)
    assert "'vst.tile_px' is 32 but input 'image' has shape" in message


def test_a_model_with_symbolic_image_size_is_accepted(tmp_path: Path) -> None:
    path = write_mean_colour_model(tmp_path / "any.onnx", image_shape=["N", "H", "W", 3])
    tiles = random_tiles(2)
    np.testing.assert_allclose(
        Predictor(path).predict(tiles).expression,
        expected_mean_colour(tiles, N_GENES),
        rtol=1e-5,
        atol=1e-5,
    )


def test_a_float64_output_is_refused(tmp_path: Path) -> None:
    message = refusal(tmp_path, expression_dtype=TensorProto.DOUBLE)
    assert "output 'expression' must be float32" in message


def test_an_undeclared_extra_input_is_refused(tmp_path: Path) -> None:
    message = refusal(tmp_path, noise_input=(8,))
    assert "input 'noise' that metadata 'vst.extra_inputs' does not declare" in message


def test_a_declared_extra_input_missing_from_the_graph_is_refused(tmp_path: Path) -> None:
    extra = json.dumps({"noise": NOISE_SPEC})
    message = refusal(tmp_path, metadata_overrides={"vst.extra_inputs": extra})
    assert "'vst.extra_inputs' declares 'noise', which the model has no input for" in message


def test_an_extra_input_of_another_dtype_than_declared_is_refused(tmp_path: Path) -> None:
    message = refusal(tmp_path, with_noise=True, noise_dtype=TensorProto.INT64)
    assert "'vst.extra_inputs' entry 'noise'" in message
    assert "declares float32 but the model's input is tensor(int64)" in message


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({**NOISE_SPEC, "dtype": "float64"}, "dtype must be one of"),
        ({**NOISE_SPEC, "shape": [8]}, 'shape must be a list starting with "N"'),
        ({**NOISE_SPEC, "shape": ["N", 2, 4]}, "does not match the model's input rank"),
        ({**NOISE_SPEC, "shape": ["N", 16]}, "does not match the model's input shape"),
        ({**NOISE_SPEC, "distribution": "cauchy"}, "distribution must be normal"),
        ({**NOISE_SPEC, "seed": -1}, "seed must be a non-negative integer"),
        ({**NOISE_SPEC, "seed": "7"}, "seed must be a non-negative integer"),
        ("normal", "must be an object"),
    ],
    ids=[
        "dtype",
        "shape",
        "rank",
        "size",
        "distribution",
        "seed-negative",
        "seed-text",
        "not-object",
    ],
)
def test_a_malformed_extra_input_declaration_is_refused(
    tmp_path: Path, spec: Any, expected: str
) -> None:
    message = refusal(
        tmp_path,
        noise_input=(8,),
        metadata_overrides={"vst.extra_inputs": json.dumps({"noise": spec})},
    )
    assert "'vst.extra_inputs' entry 'noise'" in message
    assert expected in message


def test_extra_inputs_that_are_not_a_json_object_are_refused(tmp_path: Path) -> None:
    message = refusal(tmp_path, metadata_overrides={"vst.extra_inputs": '["noise"]'})
    assert "'vst.extra_inputs' must be a JSON object" in message


def test_a_model_that_fails_on_a_batch_raises_a_model_error(tmp_path: Path) -> None:
    # reshapes the N×32×32×3 pixels to (-1, 5): impossible for one tile, wrong shape for five
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["image"], ["image_f"], to=TensorProto.FLOAT),
            helper.make_node("Reshape", ["image_f", "shape"], ["expression"]),
        ],
        "synthetic_broken",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, ["N", TILE_PX, TILE_PX, 3])],
        [helper.make_tensor_value_info("expression", TensorProto.FLOAT, ["N", N_GENES])],
        [numpy_helper.from_array(np.array([-1, N_GENES], np.int64), "shape")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    meta = ModelMetadata(
        genes=[f"SYNTH{i}" for i in range(N_GENES)],
        tile_px=TILE_PX,
        tile_um=55.0,
        family="baseline",
        target="synthetic",
    )
    predictor = Predictor(
        save_model(attach_metadata(model, meta.to_props()), tmp_path / "broken.onnx")
    )
    with pytest.raises(ModelError, match=r"broken\.onnx failed on a batch of 1 tiles"):
        predictor.predict(random_tiles(1))
    with pytest.raises(ModelError, match=r"returned expression of shape \(3072, 5\)"):
        predictor.predict(random_tiles(5))


# -- refusals: the file ----------------------------------------------------------------------
def test_a_missing_model_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"model file not found: .*nowhere\.onnx"):
        Predictor(tmp_path / "nowhere.onnx")


def test_a_folder_is_not_a_model_file(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="model file not found"):
        Predictor(tmp_path)


def test_random_bytes_are_not_a_model(tmp_path: Path) -> None:
    path = tmp_path / "random.onnx"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(ModelError, match=r"random\.onnx is not a loadable ONNX model"):
        Predictor(path)


def test_a_truncated_model_is_refused(tmp_path: Path, synthetic_model: Path) -> None:
    data = synthetic_model.read_bytes()
    path = tmp_path / "truncated.onnx"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match=r"truncated\.onnx is not a loadable ONNX model"):
        Predictor(path)


def test_an_empty_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "empty.onnx"
    path.touch()
    with pytest.raises(ModelError, match=r"empty\.onnx"):
        Predictor(path)


# -- I/O binding (the GPU path's batch handling, checked on the CPU device) -------------------
def test_io_binding_gives_the_same_values_as_session_run(tmp_path: Path) -> None:
    """The bound path (default on CUDA/TensorRT) computes what ``session.run`` computes, with
    declared noise inputs and variance; forced on here, where the device is host memory."""
    path = write_mean_colour_model(tmp_path / "noisy.onnx", with_noise=True, with_variance=True)
    plain, bound = Predictor(path), Predictor(path, io_binding=True)
    assert plain.bound_device is None  # off by default on the CPU
    assert bound.bound_device == "cpu"
    tiles, spots = random_tiles(7), np.arange(40, 47)
    a, b = plain.predict(tiles, spot_index=spots), bound.predict(tiles, spot_index=spots)
    np.testing.assert_array_equal(a.expression, b.expression)
    assert a.variance is not None and b.variance is not None
    np.testing.assert_array_equal(a.variance, b.variance)
    expected = expected_mean_colour(tiles, N_GENES) + expected_noise(spots)
    np.testing.assert_allclose(b.expression, expected, rtol=1e-5, atol=1e-5)


def test_io_binding_is_the_default_on_a_gpu_provider(
    synthetic_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from napari_virtual_st import predictor as predictor_module

    predictor = Predictor(synthetic_model)
    monkeypatch.setattr(predictor_module, "_BOUND_DEVICES", {"CPUExecutionProvider": "cuda"})
    as_if_cuda = Predictor(synthetic_model)  # (the table says the first provider is a GPU's)
    assert predictor.bound_device is None and as_if_cuda.bound_device == "cuda"
    assert Predictor(synthetic_model, io_binding=False).bound_device is None
