"""Facts about the host, read in one place: device and dtype resolution, installed versions, the GPU's
compute capability, out-of-memory recognition, and the log line format. The workflow (build cache keys),
the build and the benchmark jobs all read them from here."""
from __future__ import annotations

import re
import sys
import time
from functools import cache

DEVICE_PATTERN = r"auto|cpu|cuda(:[0-9]{1,2})?"


class DeviceError(ValueError):
    """A device that is not there: bad input, reported in one line before any work."""


def check_device(device) -> str:
    if not isinstance(device, str) or not re.fullmatch(DEVICE_PATTERN, device):
        raise DeviceError(f"device {device!r}: use auto, cpu, cuda or cuda:N")
    return device


def resolve_device(device: str) -> str:
    check_device(device)
    import torch
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceError(f"device {device!r}: torch sees no CUDA GPU here (use --device cpu or auto)")
        index = int(device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise DeviceError(f"device {device!r}: torch sees {torch.cuda.device_count()} CUDA GPU(s)")
    return device


def resolve_dtype(dtype: str, device: str) -> str:
    """auto: bfloat16 on a GPU, float32 on the CPU (every engine, the build and the reference alike)."""
    if dtype == "auto":
        return "bfloat16" if device.startswith("cuda") else "float32"
    return dtype


@cache
def installed_version(*distributions: str) -> str | None:
    """The first installed distribution's version, from package metadata (no import); None if absent."""
    from importlib import metadata
    for name in distributions:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


@cache
def compute_capability() -> str | None:
    """GPU 0's CUDA compute capability as 'major.minor' (e.g. '9.0') through NVML, so that a login node
    can read it without CUDA initialisation; None without a GPU or NVML."""
    try:
        import pynvml

        pynvml.nvmlInit()
        major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(pynvml.nvmlDeviceGetHandleByIndex(0))
        return f"{major}.{minor}"
    except Exception:
        return None


def mentions_out_of_memory(text: str) -> bool:
    text = text.lower()
    return "out of memory" in text or "can't allocate memory" in text or "cannot allocate memory" in text


def is_out_of_memory(e: BaseException) -> bool:
    """torch's CUDA OOM, the CPU allocator's refusal, and TensorRT-LLM's own out-of-memory errors."""
    import torch
    return isinstance(e, torch.OutOfMemoryError) or mentions_out_of_memory(str(e))


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)
