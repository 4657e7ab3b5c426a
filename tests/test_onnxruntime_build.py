"""Which ONNX Runtime build is installed, and the one command that puts the GPU build in place."""

from __future__ import annotations

import pytest

from napari_virtual_st.cli import main
from napari_virtual_st.onnxruntime_build import (
    RuntimeReport,
    gpu_advice,
    install_gpu_command,
    installed_builds,
)

CPU_ONLY = ["AzureExecutionProvider", "CPUExecutionProvider"]
GPU = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


def test_the_gpu_build_in_place_needs_no_advice() -> None:
    builds = {"onnxruntime": "1.31.1", "onnxruntime-gpu": "1.31.1"}
    assert gpu_advice(builds, GPU, nvidia_gpu=True) is None


def test_cpu_files_over_the_gpu_build_are_noticed_with_the_exact_fix() -> None:
    """What a later `pip install -U` does: the CPU distribution's files replace the GPU ones."""
    builds = {"onnxruntime": "1.31.1", "onnxruntime-gpu": "1.31.1"}
    advice = gpu_advice(builds, CPU_ONLY, nvidia_gpu=False)
    assert advice is not None
    assert "onnxruntime-gpu 1.31.1 is installed but the CPU onnxruntime's files" in advice
    assert advice.endswith(
        'run: pip install --force-reinstall --no-deps "onnxruntime-gpu==1.31.1"'
    )


def test_an_upgraded_cpu_build_is_brought_to_the_gpu_builds_version_first() -> None:
    builds = {"onnxruntime": "1.32.0", "onnxruntime-gpu": "1.31.1"}
    assert install_gpu_command(builds) == (
        'pip install "onnxruntime==1.31.1" && '
        'pip install --force-reinstall --no-deps "onnxruntime-gpu==1.31.1"'
    )


def test_an_nvidia_gpu_with_the_cpu_build_only_gets_the_gpu_extra() -> None:
    builds = {"onnxruntime": "1.32.0"}
    advice = gpu_advice(builds, CPU_ONLY, nvidia_gpu=True)
    assert advice is not None
    assert advice.endswith('run: pip install "napari-virtual-st[gpu]" && virtual-st runtime')
    assert gpu_advice(builds, CPU_ONLY, nvidia_gpu=False) is None


def test_the_report_says_what_is_installed_and_what_runs() -> None:
    report = RuntimeReport({"onnxruntime": "1.32.0"}, CPU_ONLY, None)
    lines = report.text().splitlines()
    assert lines[0] == "ONNX Runtime: onnxruntime 1.32.0"
    assert lines[1] == "providers:    AzureExecutionProvider, CPUExecutionProvider"
    assert lines[2].startswith("CPU build; for an NVIDIA GPU run: pip install")
    stale = RuntimeReport({"onnxruntime": "1.3", "onnxruntime-gpu": "1.3"}, CPU_ONLY, "run: x")
    assert stale.text().splitlines()[-1] == "to do:        run: x"


def test_runtime_command_reports_this_installation(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["runtime"]) == 0
    out = capsys.readouterr().out
    import onnxruntime

    assert f"onnxruntime {installed_builds()['onnxruntime']}" in out.splitlines()[0]
    assert ", ".join(onnxruntime.get_available_providers()) in out


def test_the_report_says_which_gpu_provider_runs_and_why_another_does_not() -> None:
    builds = {"onnxruntime": "1.31.1", "onnxruntime-gpu": "1.31.1"}
    runs = RuntimeReport(builds, GPU, None, {"CUDAExecutionProvider": None})
    assert "CUDAExecutionProvider: runs here" in runs.text()
    assert runs.text().splitlines()[-1] == "GPU build in place: predictions run on the GPU"
    missing = "libcudnn.so.9: cannot open shared object file"
    fails = RuntimeReport(
        builds,
        GPU,
        None,
        {
            "TensorrtExecutionProvider": "libnvinfer.so.10 missing",
            "CUDAExecutionProvider": missing,
        },
    )
    text = fails.text()
    assert f"CUDAExecutionProvider: does not run here: {missing}" in text
    assert text.splitlines()[-1].endswith('pip install "napari-virtual-st[gpu-cuda]"')


def _fresh_preload(monkeypatch: pytest.MonkeyPatch) -> None:
    from napari_virtual_st import onnxruntime_build

    monkeypatch.setattr(onnxruntime_build, "_PRELOADED", [])
    monkeypatch.setattr(onnxruntime_build, "available_providers", lambda: GPU)


def test_nvidia_wheels_are_preloaded_once_quietly_before_a_gpu_provider_is_tried(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import onnxruntime

    from napari_virtual_st import onnxruntime_build

    _fresh_preload(monkeypatch)
    monkeypatch.setattr(onnxruntime_build, "nvidia_wheels_installed", lambda: True)
    calls: list[object] = []

    def preload_dlls(directory: object = None) -> None:  # what ONNX Runtime's does on failure
        calls.append(directory)
        print("Failed to load libcudnn.so.9: cannot open shared object file")

    monkeypatch.setattr(onnxruntime, "preload_dlls", preload_dlls, raising=False)
    said = onnxruntime_build.preload_nvidia_libraries()
    assert onnxruntime_build.preload_nvidia_libraries() == said  # once per process
    assert calls == [""]  # the nvidia wheels first
    assert said == "Failed to load libcudnn.so.9: cannot open shared object file"
    assert capsys.readouterr().out == ""  # kept, not printed


def test_without_nvidia_wheels_nothing_is_preloaded(monkeypatch: pytest.MonkeyPatch) -> None:
    import onnxruntime

    from napari_virtual_st import onnxruntime_build

    _fresh_preload(monkeypatch)
    monkeypatch.setattr(onnxruntime_build, "nvidia_wheels_installed", lambda: False)
    monkeypatch.setattr(
        onnxruntime, "preload_dlls", lambda **_: pytest.fail("preloaded"), raising=False
    )
    assert onnxruntime_build.preload_nvidia_libraries() is None


def test_probing_a_gpu_provider_preloads_first(monkeypatch: pytest.MonkeyPatch) -> None:
    from napari_virtual_st import onnxruntime_build, predictor

    order: list[str] = []
    monkeypatch.setattr(predictor, "_PROBED", {})
    monkeypatch.setattr(predictor.ort, "get_available_providers", lambda: GPU)
    monkeypatch.setattr(
        onnxruntime_build, "preload_nvidia_libraries", lambda: order.append("preload")
    )

    def session(*args: object, **kwargs: object) -> None:
        order.append("session")
        raise RuntimeError("CUDA driver version is insufficient")

    monkeypatch.setattr(predictor.ort, "InferenceSession", session)
    assert predictor.probe_provider("CUDAExecutionProvider") == (
        "CUDA driver version is insufficient"
    )
    assert order == ["preload", "session"]
