"""Which ONNX Runtime build is installed, and the pip command that puts the GPU build in place.

``onnxruntime`` (CPU) and ``onnxruntime-gpu`` are two distributions that install the same
``onnxruntime`` module. napari-virtual-st depends on the CPU one, so a plain
``pip install napari-virtual-st`` (what napari's plugin manager runs) works everywhere; the
``gpu`` extra adds ``onnxruntime-gpu``, and the GPU build runs only while *its* files are the
ones on disk. pip cannot express "one or the other", so whichever of the two it installs last
wins, and a later ``pip install`` that reinstalls the CPU distribution silently puts the CPU
files back. This module notices that (``onnxruntime-gpu`` installed, CUDA not offered) and
says the exact command that restores the GPU build; ``virtual-st runtime`` prints the report.
"""

from __future__ import annotations

import importlib.metadata
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

    def text(self) -> str:
        """The report as lines for a terminal."""
        builds = ", ".join(f"{name} {version}" for name, version in self.builds.items())
        lines = [
            f"ONNX Runtime: {builds or 'not installed'}",
            f"providers:    {', '.join(self.providers) or 'none'}",
        ]
        if self.advice:
            lines.append(f"to do:        {self.advice}")
        elif CUDA_PROVIDER in self.providers:
            lines.append(
                "GPU build in place: CUDA (and TensorRT where offered) run when their NVIDIA "
                "libraries load, else the CPU does"
            )
        else:
            lines.append(f"CPU build; for an NVIDIA GPU run: {install_gpu_command(self.builds)}")
        return "\n".join(lines)


def describe_runtime() -> RuntimeReport:
    """The installed ONNX Runtime builds, their providers, and advice (``virtual-st runtime``)."""
    builds = installed_builds()
    providers = available_providers()
    return RuntimeReport(builds, providers, gpu_advice(builds, providers))
