"""What this machine offers: CUDA, bitsandbytes, bf16, GPU memory, and library versions.

Probes are functions (not import-time constants) so tests can replace them, and so importing
`lab` never initialises CUDA.
"""

from __future__ import annotations

import functools
import importlib.metadata
import platform

import torch

GIB = 2**30


def cuda_available() -> bool:
    return torch.cuda.is_available()


@functools.cache
def bnb_available() -> bool:
    """True when bitsandbytes imports; a broken install counts as absent."""
    try:
        import bitsandbytes  # noqa: F401
    except Exception:
        return False
    return True


def bf16_supported() -> bool:
    return cuda_available() and torch.cuda.is_bf16_supported()


def gpu_free_bytes() -> int | None:
    if not cuda_available():
        return None
    free, _total = torch.cuda.mem_get_info()
    return free


def gpu_allocated_gib() -> float | None:
    return torch.cuda.memory_allocated() / GIB if cuda_available() else None


def gpu_peak_gib() -> float | None:
    return torch.cuda.max_memory_allocated() / GIB if cuda_available() else None


def release_gpu_memory() -> None:
    """Hand cached blocks back to the driver after a model was dropped."""
    import gc

    gc.collect()
    if cuda_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def versions() -> dict:
    """Library and hardware versions, written into results files and exports."""
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": package_version("transformers"),
        "accelerate": package_version("accelerate"),
        "bitsandbytes": package_version("bitsandbytes"),
        "gradio": package_version("gradio"),
        "cuda": torch.version.cuda,
    }
    if cuda_available():
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = props.name
        info["gpu_memory_gib"] = round(props.total_memory / GIB, 1)
        info["driver"] = _driver_version()
    else:
        info["gpu"] = None
        info["cpu"] = platform.processor() or platform.machine()
    return info


def _driver_version() -> str | None:
    try:
        import pynvml  # shipped as nvidia-ml-py with recent CUDA wheels

        pynvml.nvmlInit()
        try:
            v = pynvml.nvmlSystemGetDriverVersion()
        finally:
            pynvml.nvmlShutdown()
        return v.decode() if isinstance(v, bytes) else v
    except Exception:
        import subprocess

        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=10,
            )
            return out.stdout.strip().splitlines()[0] if out.returncode == 0 else None
        except (OSError, subprocess.SubprocessError, IndexError):
            return None
