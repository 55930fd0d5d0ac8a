"""Where and with what a result was measured."""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import platform
import socket
import subprocess
from pathlib import Path

import inference_optim_llm

REPO = Path(__file__).resolve().parent.parent


def config_hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def source_hash() -> str:
    """sha256 of the package's own files (code and report template), 16 hex digits: which measuring code
    ran, also where the checkout's git metadata does not describe the files (a copied working tree)."""
    h = hashlib.sha256()
    pkg = Path(inference_optim_llm.__file__).resolve().parent
    for f in sorted(p for p in pkg.rglob("*") if p.suffix in (".py", ".j2") and "__pycache__" not in p.parts):
        h.update(f.relative_to(pkg).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5)
        if out.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.TimeoutExpired):
        return None


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_info() -> dict:
    info = {"gpu_name": None, "gpu_count": 0, "driver": None, "cuda": None, "compute_capability": None}
    try:
        import torch
        info["cuda"] = torch.version.cuda
        if torch.cuda.is_available():
            info["gpu_name"] = torch.cuda.get_device_name(0)
            info["gpu_count"] = torch.cuda.device_count()
            info["compute_capability"] = "%d.%d" % torch.cuda.get_device_capability(0)
    except Exception:
        pass
    try:
        import pynvml
        pynvml.nvmlInit()
        d = pynvml.nvmlSystemGetDriverVersion()
        info["driver"] = d.decode() if isinstance(d, bytes) else d
        pynvml.nvmlShutdown()
    except Exception:
        pass
    return info


def slurm_info() -> dict | None:
    if "SLURM_JOB_ID" not in os.environ:
        return None
    return {"job_id": os.environ.get("SLURM_JOB_ID"), "node": os.environ.get("SLURMD_NODENAME"),
            "partition": os.environ.get("SLURM_JOB_PARTITION")}


def now_utc() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def collect(effective_config: dict) -> dict:
    import torch
    import transformers

    return {
        **gpu_info(),
        "cpu": cpu_name(),
        "host": socket.gethostname(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "project": inference_optim_llm.__version__,
        "git_commit": git_commit(),
        "source_hash": source_hash(),
        "config_hash": config_hash(effective_config),
        "time_utc": now_utc(),
        "slurm": slurm_info(),
    }
