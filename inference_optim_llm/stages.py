"""The workflow's stages, one function each, named as their rules are (download_model, build_engine,
calibrate, reference_tokens, run_benchmark, serving_model, run_serving, aggregate). The CLI commands and the workflow's scripts
(workflow/scripts/, through `job`) call the same functions. Every output is checked writable before
any measurement and written atomically."""
from __future__ import annotations

import signal
import sys
from contextlib import contextmanager
from pathlib import Path

from inference_optim_llm import watchdog
from inference_optim_llm.interference import InterferenceError
from inference_optim_llm.io import INTERRUPTED, Interrupted, check_writable, write_json
from inference_optim_llm.metrics import TokenCountError
from inference_optim_llm.scenarios.serving import RequestFailed
from inference_optim_llm.servers import ServerStartError
from inference_optim_llm.targetlock import TargetBusy, target_lock

# Failures whose message says all (bad input, an unwritable place, a server that did not start with its
# log's tail, a failed request, a token count other than asked, an interfered cell, a target another job
# makes): the CLI and the workflow's jobs print the message alone, no traceback.
FAILURES = (ValueError, OSError, ServerStartError, RequestFailed, InterferenceError, TokenCountError, TargetBusy)


# SIGTERM (what SLURM and Snakemake send), SIGHUP and SIGINT raise Terminated, so every
# `except BaseException` clean-up (temporary files and directories, child processes) runs; the signal
# is also recorded, so that nothing is published afterwards even if a library swallows the exception.
Terminated = Interrupted


def _terminate(signum, frame):
    name = signal.Signals(signum).name
    INTERRUPTED.append(name)
    raise Terminated(name)


def install_signal_handlers() -> None:
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, _terminate)


def check_outputs(*pairs: tuple[str | None, str]) -> None:
    """Before any measurement: every output can be written (the error names the flag and the path)."""
    for path, flag in pairs:
        if path:
            check_writable(path, flag)


def run_benchmark(spec, output: str | None, records: str | None, flags=("--output", "--records")) -> dict:
    from inference_optim_llm import results
    from inference_optim_llm.runner import run
    check_outputs((output, flags[0]), (records, flags[1]))
    result, rows = run(spec)
    results.write(result, rows, output, records)
    return result


def run_serving(spec, output: str | None, records: str | None, server_log: str,
                flags=("--output", "--records", "--server-log")) -> dict:
    from inference_optim_llm import results
    from inference_optim_llm.runner import run_serving as measure
    check_outputs((output, flags[0]), (records, flags[1]), (server_log, flags[2]))
    result, rows = measure(spec, server_log)
    results.write(result, rows, output, records)
    return result


def serving_model(model_dir: str, output: str, trust_remote_code: bool = False, device: str = "auto",
                  dtype: str = "auto") -> None:
    from inference_optim_llm.hostfacts import resolve_device, resolve_dtype
    from inference_optim_llm.models import serving_copy
    device = resolve_device(device)
    changed = serving_copy(Path(model_dir), Path(output), trust_remote_code, device, resolve_dtype(dtype, device))
    print(f"serving copy of {model_dir} in {output}: eos_token_id {changed['eos_token_id']['was']} -> None, "
          f"{len(changed['suppress_tokens'])} tokens that stream no text suppressed")


def reference_tokens(spec, output: str) -> None:
    from inference_optim_llm.runner import reference_tokens as measure
    check_outputs((output, "--output"))
    write_json(output, measure(spec))


def calibrate(device: str, output: str, size_mb: int = 2048) -> dict:
    from inference_optim_llm import bandwidth, provenance
    from inference_optim_llm.hostfacts import resolve_device
    from inference_optim_llm.intermediates import check_calibration
    if not 16 <= size_mb <= 65536:
        raise ValueError(f"--size-mb: {size_mb} is outside 16 to 65536")
    device = resolve_device(device)
    check_outputs((output, "--output"))
    result = bandwidth.measure(device, size_mb=size_mb if device.startswith("cuda") else min(size_mb, 256))
    info = provenance.gpu_info()
    result.update(gpu_name=info["gpu_name"] if device.startswith("cuda") else None, cpu=provenance.cpu_name(),
                  host=provenance.socket.gethostname(), time_utc=provenance.now_utc())
    write_json(output, check_calibration(result, output))
    print(f"{device}: {result['bandwidth_gb_s']:.0f} GB/s (copy of {result['size_mb']} MiB, read + write)")
    return result


def paths(named_input) -> list[Path]:
    """A named input as a list of paths (Snakemake gives one file as a plain string)."""
    return [Path(named_input)] if isinstance(named_input, str) else [Path(p) for p in named_input]


@contextmanager
def job(snakemake):
    """Around a workflow script: everything it prints (its child processes too) goes to the rule's log,
    SIGTERM/SIGHUP clean up like Ctrl-C, and bad input ends the job with one line, no traceback.
    The job stops (as on SIGTERM) when the workflow that started it is gone (watchdog), and refuses to
    start while another job makes the same target (targetlock): one measurement per result."""
    import os

    log = open(snakemake.log[0], "w", buffering=1)
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    sys.stdout = sys.stderr = log
    install_signal_handlers()
    try:
        with target_lock(snakemake.output[0]):
            watchdog.watch()
            yield
    except FAILURES as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except Terminated as e:
        print(f"stopped by {e}: temporary files removed, nothing half-written left", file=sys.stderr)
        sys.exit(128 + signal.Signals[str(e)].value)
