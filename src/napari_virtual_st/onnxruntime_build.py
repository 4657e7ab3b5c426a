"""Which ONNX Runtime build is installed, and the pip command that puts the GPU build in place.

``onnxruntime`` (CPU) and ``onnxruntime-gpu`` are two distributions that install the same
``onnxruntime`` module. napari-virtual-st depends on the CPU one, so a plain
``pip install napari-virtual-st`` (what napari's plugin manager runs) works everywhere; the
``gpu`` extra adds ``onnxruntime-gpu``, and the GPU build runs only while *its* files are the
ones on disk. pip cannot express "one or the other", so whichever of the two it installs last
wins, and a later ``pip install`` that reinstalls the CPU distribution silently puts the CPU
files back. This module notices that (``onnxruntime-gpu`` installed, CUDA not offered) and
says the exact command that restores the GPU build; ``virtual-st runtime`` prints the report,
including whether each GPU provider really runs here and, when not, why.

CUDA and cuDNN themselves come either from the system (a CUDA toolkit on the loader's path) or
from NVIDIA's pip wheels (``nvidia-*``, the ``gpu-cuda`` extra: ``onnxruntime-gpu[cuda,cudnn]``).
The loader does not look inside those wheels, so :func:`preload_nvidia_libraries` loads them
(ONNX Runtime's own ``preload_dlls``) before a GPU provider is first tried.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import io
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

#: The two distributions that provide the ``onnxruntime`` module and that this package knows.
CPU_DISTRIBUTION = "onnxruntime"
GPU_DISTRIBUTION = "onnxruntime-gpu"
CUDA_PROVIDER = "CUDAExecutionProvider"


def installed_builds() -> dict[str, str]:
    """The installed ONNX Runtime distributions, name → version (CPU and GPU builds)."""
    found: dict[str, str] = {}
    for name in (CPU_DISTRIBUTION, GPU_DISTRIBUTION):
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def available_providers() -> list[str]:
    """The execution providers the installed ``onnxruntime`` module was built with."""
    import onnxruntime

    return list(onnxruntime.get_available_providers())


_PRELOADED: list[str | None] = []


def nvidia_wheels_installed() -> bool:
    """Whether NVIDIA's CUDA/cuDNN pip wheels (the ``nvidia`` namespace package) are installed."""
    try:
        return importlib.util.find_spec("nvidia") is not None
    except (ImportError, ValueError):
        return False


def preload_nvidia_libraries() -> str | None:
    """Load CUDA and cuDNN from NVIDIA's pip wheels, once per process, before a GPU provider runs.

    Does nothing (returns ``None``) without those wheels, or with an ONNX Runtime that cannot
    preload (older than 1.21, or the CPU build): the system's libraries are then found by the
    loader as before. ONNX Runtime's ``preload_dlls`` prints what fails to load; that text is
    kept (returned) instead of reaching the terminal, so a machine without CUDA stays quiet.

    Returns
    -------
    str or None
        What the preload said (empty when all loaded), or ``None`` when it was not attempted.
    """
    if _PRELOADED:
        return _PRELOADED[0]
    said: str | None = None
    import onnxruntime

    preload = getattr(onnxruntime, "preload_dlls", None)
    if (
        preload is not None
        and CUDA_PROVIDER in available_providers()
        and nvidia_wheels_installed()
    ):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            try:
                preload(directory="")  # "": the nvidia wheels first, then the loader's paths
            except Exception as exc:  # a broken wheel must not stop the CPU fallback
                print(f"preload failed: {exc}")
        said = out.getvalue().strip()
    _PRELOADED.append(said)
    return said


def nvidia_gpu_present() -> bool:
    """Whether this computer shows an NVIDIA GPU (a driver's GPU list, or ``nvidia-smi``)."""
    gpus = Path("/proc/driver/nvidia/gpus")
    if gpus.is_dir() and any(gpus.iterdir()):
        return True
    return shutil.which("nvidia-smi") is not None


def install_gpu_command(builds: Mapping[str, str]) -> str:
    """The pip command that puts the GPU build in place, given what is installed.

    With ``onnxruntime-gpu`` installed: both distributions stay installed (the package
    requires ``onnxruntime``, so ``pip check`` stays clean) at the same version, and the GPU
    build's files are written last. Without it: the ``gpu`` extra, then
    ``virtual-st runtime`` (which then knows the versions and says the rest, if anything).

    Parameters
    ----------
    builds
        Installed distributions, name → version (:func:`installed_builds`).
    """
    version = builds.get(GPU_DISTRIBUTION)
    if version is None:
        return 'pip install "napari-virtual-st[gpu]" && virtual-st runtime'
    restore = f'pip install --force-reinstall --no-deps "{GPU_DISTRIBUTION}=={version}"'
    if builds.get(CPU_DISTRIBUTION, version) != version:
        return f'pip install "{CPU_DISTRIBUTION}=={version}" && {restore}'
    return restore


def gpu_advice(
    builds: Mapping[str, str] | None = None,
    providers: Sequence[str] | None = None,
    nvidia_gpu: bool | None = None,
) -> str | None:
    """One line telling the user how to run on the GPU, or ``None`` when nothing is to be done.

    Parameters
    ----------
    builds, providers, nvidia_gpu
        What is installed, the providers the module offers, and whether an NVIDIA GPU is
        present; found out here when not given.

    Returns
    -------
    str or None
        Advice when ``onnxruntime-gpu`` is installed but its files were replaced by the CPU
        build's, or when an NVIDIA GPU is present but only the CPU build is installed.
    """
    builds = installed_builds() if builds is None else builds
    providers = available_providers() if providers is None else providers
    if CUDA_PROVIDER in providers:
        return None
    if GPU_DISTRIBUTION in builds:
        return (
            f"{GPU_DISTRIBUTION} {builds[GPU_DISTRIBUTION]} is installed but the CPU "
            f"{CPU_DISTRIBUTION}'s files replaced its own (a later pip install does that), so "
            f"the GPU is not used; to use it again run: {install_gpu_command(builds)}"
        )
    if nvidia_gpu_present() if nvidia_gpu is None else nvidia_gpu:
        return (
            "this computer has an NVIDIA GPU but only the CPU build of ONNX Runtime is "
            f"installed; to use the GPU run: {install_gpu_command(builds)}"
        )
    return None


@dataclass(frozen=True)
class RuntimeReport:
    """What ``virtual-st runtime`` says: builds, providers, and advice if any."""

    builds: dict[str, str]
    providers: list[str]
    advice: str | None
    #: GPU provider → ``None`` when it runs here, else why not (one line).
    gpu_status: dict[str, str | None] | None = None

    def text(self) -> str:
        """The report as lines for a terminal."""
        builds = ", ".join(f"{name} {version}" for name, version in self.builds.items())
        lines = [
            f"ONNX Runtime: {builds or 'not installed'}",
            f"providers:    {', '.join(self.providers) or 'none'}",
        ]
        for name, problem in (self.gpu_status or {}).items():
            state = "runs here" if problem is None else f"does not run here: {problem}"
            lines.append(f"{name}: {state}")
        if self.advice:
            lines.append(f"to do:        {self.advice}")
        elif CUDA_PROVIDER in self.providers:
            if any(problem is None for problem in (self.gpu_status or {}).values()):
                lines.append("GPU build in place: predictions run on the GPU")
            else:
                lines.append(
                    "GPU build in place, but no GPU provider runs: the CPU does. CUDA and "
                    "cuDNN must be on the loader's path, or installed as pip wheels: "
                    'pip install "napari-virtual-st[gpu-cuda]"'
                )
        else:
            lines.append(f"CPU build; for an NVIDIA GPU run: {install_gpu_command(self.builds)}")
        return "\n".join(lines)


def describe_runtime() -> RuntimeReport:
    """The installed ONNX Runtime builds, their providers, and advice (``virtual-st runtime``)."""
    from napari_virtual_st.predictor import GPU_PROVIDERS, probe_provider

    builds = installed_builds()
    providers = available_providers()
    status = {name: probe_provider(name) for name in providers if name in GPU_PROVIDERS}
    return RuntimeReport(builds, providers, gpu_advice(builds, providers), status)
