"""Sizing the reader and model thread pools, and choosing execution providers quietly."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from napari_virtual_st import predictor as predictor_module
from napari_virtual_st.errors import ModelError
from napari_virtual_st.pipeline import ThreadPlan, plan_threads, usable_cores
from napari_virtual_st.predictor import cache_dir, provider_options, resolve_providers

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.mark.parametrize(
    ("cores", "expected"),
    [(1, ThreadPlan(1, 1)), (2, ThreadPlan(1, 2)), (4, ThreadPlan(1, 3)), (16, ThreadPlan(1, 15))],
)
def test_a_cpu_model_gets_the_cores_a_light_reader_leaves(
    cores: int, expected: ThreadPlan
) -> None:
    assert plan_threads(cores) == expected


@pytest.mark.parametrize(
    ("cores", "expected"),
    [(1, ThreadPlan(1, 1)), (2, ThreadPlan(1, 2)), (4, ThreadPlan(2, 4)), (16, ThreadPlan(8, 8))],
)
def test_a_model_cheaper_than_reading_gets_as_many_readers_as_its_share(
    cores: int, expected: ThreadPlan
) -> None:
    assert plan_threads(cores, read_share=0.5) == expected


@pytest.mark.parametrize(("cores", "readers"), [(1, 1), (2, 1), (4, 3), (16, 15), (64, 16)])
def test_a_gpu_model_leaves_the_cpu_to_the_readers(cores: int, readers: int) -> None:
    assert plan_threads(cores, on_gpu=True) == ThreadPlan(readers, 1)


def test_usable_cores_follows_the_process_affinity() -> None:
    if not hasattr(os, "sched_getaffinity"):
        pytest.skip("no CPU affinity on this platform")
    assert usable_cores() == len(os.sched_getaffinity(0))
    taskset = shutil.which("taskset")
    if taskset is None:
        pytest.skip("taskset is not installed")
    first = min(os.sched_getaffinity(0))
    code = "from napari_virtual_st.pipeline import usable_cores; print(usable_cores())"
    out = subprocess.run(
        [taskset, "-c", str(first), sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(SRC)},
    )
    assert out.stdout.strip() == "1"


# -- providers --------------------------------------------------------------------------------
def test_tensorrt_gets_an_engine_cache_and_fp16_and_cuda_its_options(tmp_path: Path) -> None:
    options = provider_options(
        ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
        engine_cache=tmp_path,
    )
    trt_name, trt = options[0]
    assert trt_name == "TensorrtExecutionProvider"
    assert trt["trt_engine_cache_enable"] is True
    assert trt["trt_engine_cache_path"] == str(tmp_path)
    assert trt["trt_fp16_enable"] is True
    assert options[1][0] == "CUDAExecutionProvider"
    assert options[2] == "CPUExecutionProvider"
    assert (
        provider_options(["TensorrtExecutionProvider"], fp16=False)[0][1]["trt_fp16_enable"]
        is False
    )


def test_the_cache_folder_follows_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("VST_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir("tensorrt") == tmp_path / "xdg" / "napari-virtual-st" / "tensorrt"
    monkeypatch.setenv("VST_CACHE_DIR", str(tmp_path / "own"))
    assert cache_dir("int8") == tmp_path / "own" / "int8"


@pytest.fixture
def gpu_build(monkeypatch: pytest.MonkeyPatch) -> dict[str, str | None]:
    """An onnxruntime-gpu build as seen by the engine: TensorRT and CUDA listed; what each
    probe finds is set by the test."""
    listed = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(predictor_module.ort, "get_available_providers", lambda: listed)
    probed: dict[str, str | None] = {}
    monkeypatch.setattr(predictor_module, "_PROBED", probed)
    return probed


def test_gpu_providers_whose_libraries_are_missing_are_skipped_quietly(
    gpu_build: dict[str, str | None],
) -> None:
    gpu_build["TensorrtExecutionProvider"] = "libnvinfer.so.10: cannot open shared object file"
    gpu_build["CUDAExecutionProvider"] = "libcudnn.so.9: cannot open shared object file"
    assert resolve_providers(None) == ["CPUExecutionProvider"]
    with pytest.raises(ModelError, match="does not run here: libnvinfer"):
        resolve_providers(["tensorrt"])


def test_tensorrt_falls_back_to_cuda_then_the_cpu(gpu_build: dict[str, str | None]) -> None:
    gpu_build["TensorrtExecutionProvider"] = None
    gpu_build["CUDAExecutionProvider"] = None
    assert resolve_providers(None) == [
        "TensorrtExecutionProvider",
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    ]
    assert resolve_providers(["trt"]) == [
        "TensorrtExecutionProvider",
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    ]
    assert resolve_providers(["cuda"]) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    gpu_build["TensorrtExecutionProvider"] = "no TensorRT"
    assert resolve_providers(None) == ["CUDAExecutionProvider", "CPUExecutionProvider"]


def test_probing_a_provider_this_build_lacks_prints_nothing(
    capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(predictor_module, "_PROBED", {})
    assert predictor_module.probe_provider("CPUExecutionProvider") is None
    if "CUDAExecutionProvider" not in predictor_module.ort.get_available_providers():
        assert predictor_module.probe_provider("CUDAExecutionProvider") is not None
    assert resolve_providers(None)[-1] == "CPUExecutionProvider"
    captured = capfd.readouterr()
    assert captured.out == "" and captured.err == ""


def test_small_tile_models_count_reading_as_half_their_cost() -> None:
    from napari_virtual_st.pipeline import read_share_for

    assert read_share_for(16) == 0.5 and read_share_for(224) < 0.1 and read_share_for(None) < 0.1


def test_the_predict_panel_names_a_listed_gpu_without_trying_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import onnxruntime

    from napari_virtual_st import predictor
    from napari_virtual_st._napari import model_choices

    def no_probe(name: str) -> str | None:
        raise AssertionError(f"probed {name} while the panel opened")

    monkeypatch.setattr(predictor, "probe_provider", no_probe)
    monkeypatch.setattr(
        onnxruntime,
        "get_available_providers",
        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"],
    )
    assert model_choices.first_provider_label() == (
        "CUDA (NVIDIA GPU) if it works here, else CPU (checked at Run)"
    )
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    assert model_choices.first_provider_label() == "CPU"
