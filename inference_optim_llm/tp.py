"""Tensor parallelism for the compiled engine, in the manner of pytorch-labs/gpt-fast's tp.py.

- Column-parallel: each rank holds its share of the query and KV heads (the fused q/k/v rows of those
  heads) and of the MLP's gate and up rows. Row-parallel: the matching columns of o and down. One
  all-reduce (sum) after o and one after down; norms, embedding and the LM head are replicated, so every
  rank computes the same next token.
- The all-reduce is torch's functional collective, which torch.compile traces into the step (and, on
  CUDA, CUDA graphs capture with NCCL); gloo on the CPU.
- Processes: the benchmark's own process is rank 0 and drives the scenario; it starts `gpus - 1` worker
  processes (torch.multiprocessing, spawn), which load their shard and then follow rank 0's commands
  (a batch to generate, or stop), broadcast over the same process group. On CUDA rank r uses device r.
"""
from __future__ import annotations

import os
import socket
import sys

import torch

STOP, GENERATE = 0, 1
# Off, as the GPU machine's notes require on its 2-GPU hosts (NVLink multicast must stay off); set here so
# that every worker process has them, whatever environment a launcher built.
MULTICAST_OFF = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}


class TensorParallelError(ValueError):
    """A model whose heads or MLP cannot be split evenly over the asked number of GPUs."""


def check_divisible(cfg, world: int) -> None:
    for key in ("num_attention_heads", "num_key_value_heads", "intermediate_size"):
        value = getattr(cfg, key)
        if value % world:
            raise TensorParallelError(f"{key} is {value}, which does not split evenly over gpus {world}")


def shard_layer(w: dict, n_heads: int, n_kv: int, head_dim: int, rank: int, world: int) -> dict:
    """One layer's fused weights (FusedLlama's dict: wqkv, wo, wgu, wd, norms), cut to this rank's share."""
    if world == 1:
        return w
    nq, nkv = n_heads * head_dim, n_kv * head_dim
    q, k, v = w["wqkv"].split([nq, nkv, nkv])
    gate, up = w["wgu"].chunk(2)

    def rows(t):   # this rank's contiguous block of output rows (heads, or MLP units)
        return t.chunk(world)[rank]

    def cols(t):
        return t.chunk(world, dim=1)[rank]

    return dict(norm1=w["norm1"], norm2=w["norm2"],
                wqkv=torch.cat([rows(q), rows(k), rows(v)]).contiguous(), wo=cols(w["wo"]).contiguous(),
                wgu=torch.cat([rows(gate), rows(up)]).contiguous(), wd=cols(w["wd"]).contiguous())


def all_reduce(x, world: int):
    """Sum over the ranks; traceable by torch.compile. The identity with one rank."""
    if world == 1:
        return x
    import torch.distributed as dist
    import torch.distributed._functional_collectives as funcol
    return funcol.all_reduce(x, "sum", dist.group.WORLD.group_name)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Workers:
    """Ranks 1..N-1, each a `python -c` process (not multiprocessing's spawn, which would import the
    job's main script again: Snakemake's script directive runs the benchmark from one). They die with
    this process (PR_SET_PDEATHSIG)."""

    def __init__(self, procs, port: int):
        self.procs, self.port = procs, port

    def stop(self, device: str, clean: bool = True) -> None:
        """Tell the workers to stop (if the group is up, every worker alive and rank 0 between batches:
        `clean`; else a stop message would not match what the workers wait in, so they are killed), wait
        for them (60 s, then kill), leave the group.
        Leaving is bounded too: on 2 H200s (2026-11-28) a tp2 job measured, then never finished its
        teardown (workers then left the group themselves, and rank 0's destroy_process_group waited on
        them). Now workers exit without leaving, and rank 0 gives up leaving after 30 s, so a measured
        result is always written."""
        import threading

        import torch.distributed as dist

        if clean and dist.is_initialized() and all(p.poll() is None for p in self.procs):
            send_stop(device)
        else:
            for p in self.procs:
                p.kill()
        for p in self.procs:
            try:
                p.wait(timeout=60)
            except Exception:
                p.kill()
                p.wait()
        if dist.is_initialized():
            leave = threading.Thread(target=dist.destroy_process_group, daemon=True)
            leave.start()
            leave.join(timeout=30)
            if leave.is_alive():
                print("tensor parallel: leaving the process group took over 30 s; going on without it",
                      file=sys.stderr, flush=True)

    def __bool__(self) -> bool:
        return bool(self.procs)


def start_workers(engine_class: str, settings) -> Workers:
    """Start ranks 1..settings.gpus-1, each running run_worker(engine_class, settings, rank, port)."""
    import dataclasses
    import json
    import subprocess

    from inference_optim_llm.servers import _die_with_parent

    port = free_port()
    fields = {k: str(v) if isinstance(v, os.PathLike) else v for k, v in dataclasses.asdict(settings).items()}
    code = ("import json, sys; from pathlib import Path; from inference_optim_llm.engines.base import EngineSettings; "
            "from inference_optim_llm.tp import run_worker; f = json.loads(sys.argv[1]); "
            "f['model_dir'] = Path(f['model_dir']); "
            "f['artifact_dir'] = Path(f['artifact_dir']) if f['artifact_dir'] else None; "
            f"run_worker({engine_class!r}, EngineSettings(**f), int(sys.argv[2]), int(sys.argv[3]))")
    threads = max(1, torch.get_num_threads() // settings.gpus)
    env = {**os.environ, **MULTICAST_OFF, "OMP_NUM_THREADS": str(threads)}
    procs = [subprocess.Popen([sys.executable, "-c", code, json.dumps(fields), str(rank), str(port)], env=env,
                              preexec_fn=_die_with_parent) for rank in range(1, settings.gpus)]
    return Workers(procs, port)


def run_worker(engine_class: str, settings, rank: int, port: int) -> None:
    """Rank `rank` (a process of start_workers): join, load this rank's share, follow rank 0, exit without
    leaving the group (rank 0's teardown must not wait on it: Workers.stop)."""
    import importlib

    module, _, name = engine_class.partition(":")
    init(rank, settings.gpus, port, settings.device)
    engine = getattr(importlib.import_module(module), name)(settings)
    engine.rank = rank
    try:
        engine.load()        # it agrees with the other ranks on how loading went (Ranks.load_share)
    except BaseException as e:
        print(f"tensor parallel: rank {rank} could not load its share: {type(e).__name__}: {e}",
              file=sys.stderr, flush=True)
        os._exit(1)
    while (batch := receive_batch(settings.device)) is not None:
        engine.run_batch(*batch)
    if settings.device.startswith("cuda"):
        torch.cuda.synchronize()
    os._exit(0)


class Ranks:
    """For an engine with tensor parallelism (registry `tensor_parallel`): rank 0 (the job) starts the
    workers and sends each batch; every rank runs it with the engine's run_batch(ids, mask, n)."""

    rank = 0
    workers: Workers | None = None
    in_batch = False     # rank 0 sent a batch that has not come back: the workers are inside it

    def start_ranks(self, engine_class: str) -> None:
        """Rank 0: check that the model splits and the GPUs are there (else unavailable, before any process
        starts), start the workers, join the group."""
        from transformers import AutoConfig

        from inference_optim_llm.engines.base import EngineUnavailable
        s = self.settings
        if s.gpus == 1 or self.rank != 0:
            return
        try:
            check_divisible(AutoConfig.from_pretrained(s.model_dir, trust_remote_code=s.trust_remote_code), s.gpus)
        except TensorParallelError as e:
            raise EngineUnavailable(f"tensor parallel: {e}") from None
        if ":" in s.device:
            raise EngineUnavailable(f"tensor parallel: device {s.device!r} names one GPU; use cuda (rank r "
                                    "uses GPU r)")
        if s.device.startswith("cuda") and torch.cuda.device_count() < s.gpus:
            raise EngineUnavailable(f"gpus {s.gpus} asked, {torch.cuda.device_count()} visible")
        self.workers = start_workers(engine_class, s)
        init(0, s.gpus, self.workers.port, s.device)

    def load_share(self, load) -> None:
        """Every rank: load(), then agree with the others on how it went, so that no rank waits for ever
        on one that failed: if any failed, all raise (out of memory where that was the cause)."""
        if self.settings.gpus == 1:
            return load()
        import torch.distributed as dist

        from inference_optim_llm.hostfacts import is_out_of_memory
        error = None
        try:
            load()
        except Exception as e:   # noqa: BLE001 (raised again below, after the others are told)
            error = e
        code = 0 if error is None else 1 if is_out_of_memory(error) else 2
        flag = torch.tensor([code], device="cuda" if self.settings.device.startswith("cuda") else "cpu")
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if error is not None:
            raise error
        if flag.item() == 1:
            raise torch.OutOfMemoryError("out of memory on another tensor-parallel rank while loading its share")
        if flag.item():
            raise RuntimeError("another tensor-parallel rank could not load its share (its error is in this log)")

    def share_batch(self, ids, mask, max_new_tokens: int):
        """Rank 0, before running a batch: the same batch to every worker. Returns the mask as sent."""
        if self.settings.gpus > 1:
            mask = mask.long()
            self.in_batch = True
            send_batch(ids, mask, max_new_tokens)
            self.last_batch = (ids, mask, max_new_tokens)
        return mask

    def collective_fields(self) -> dict:
        """Rank 0, after measuring (telemetry closed): the share of a batch's GPU time in collectives, from
        one more run of the last batch under torch.profiler (every rank runs it; rank 0's kernels are read).
        {} with one process; null with the reason where kernels cannot be read (the CPU)."""
        if self.settings.gpus == 1:
            return {}
        if not self.settings.device.startswith("cuda") or not hasattr(self, "last_batch"):
            return {"collectives": {"share": None, "reason": "measured from CUDA kernel times (none on the CPU)"}}
        import json
        import tempfile
        from pathlib import Path

        from torch.profiler import ProfilerActivity, profile
        ids, mask, n = self.last_batch
        try:
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                self.share_batch(ids, mask, n)
                self.run_batch(ids, mask, n)
                torch.cuda.synchronize()
                self.batch_done()
            with tempfile.TemporaryDirectory() as d:
                prof.export_chrome_trace(str(Path(d) / "trace.json"))
                events = json.loads((Path(d) / "trace.json").read_text())["traceEvents"]
        except Exception as e:   # noqa: BLE001 (the measured result is kept; this figure is null, with why)
            return {"collectives": {"share": None, "reason": f"profiling failed: {type(e).__name__}: {str(e)[:200]}"}}
        kernels = [(e["name"], e["ts"], e["dur"]) for e in events if e.get("cat") == "kernel" and "dur" in e]
        return {"collectives": {**collective_share(kernels), "batch_size": int(ids.shape[0]), "new_tokens": n,
                                "method": "torch.profiler over one batch after the timed ones, rank 0's kernels: "
                                          "NCCL kernel time over the span from the first kernel's start to the "
                                          "last one's end (prefill included)"}}

    def batch_done(self) -> None:
        self.in_batch = False

    def own_pids(self) -> frozenset[int]:
        """The worker processes: part of this measurement, not other work on the GPU."""
        return frozenset(p.pid for p in self.workers.procs) if self.workers else frozenset()

    def stop_ranks(self) -> None:
        if self.workers:
            self.workers.stop(self.settings.device, clean=not self.in_batch)
            self.workers = None


def collective_share(kernels: list[tuple[str, float, float]]) -> dict:
    """Pure logic. kernels: (name, start us, duration us) of one batch on one GPU. The collectives' (NCCL's)
    share of the span from the first kernel's start to the last one's end, and their time per batch."""
    if not kernels:
        return {"share": None, "reason": "the profiler saw no kernels"}
    span = max(t + d for _, t, d in kernels) - min(t for _, t, _ in kernels)
    nccl = [d for name, _, d in kernels if "nccl" in name.lower()]
    if not nccl:
        return {"share": None, "reason": "the profiler saw no NCCL kernel (kernels in CUDA graphs not traced?)"}
    return {"share": sum(nccl) / span, "collective_ms": sum(nccl) / 1e3, "span_ms": span / 1e3,
            "collective_kernels": len(nccl), "kernels": len(kernels)}


def init(rank: int, world: int, port: int, device: str) -> str:
    """Join the process group; returns this rank's device. RANK, WORLD_SIZE and LOCAL_RANK are set too
    (transformers' tensor parallelism reads them)."""
    import torch.distributed as dist

    os.environ.update(MULTICAST_OFF, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    from datetime import timedelta

    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.set_device(rank)
    # 10 minutes to gather every rank (loading comes after): a rank that died before joining fails the job
    dist.init_process_group("nccl" if cuda else "gloo", init_method=f"tcp://127.0.0.1:{port}",
                            rank=rank, world_size=world, timeout=timedelta(minutes=10))
    return f"cuda:{rank}" if cuda else "cpu"


def send_batch(ids, mask, max_new_tokens: int) -> None:
    """Rank 0: the next batch, to every worker."""
    import torch.distributed as dist

    header = torch.tensor([GENERATE, *ids.shape, max_new_tokens], dtype=torch.long, device=ids.device)
    dist.broadcast(header, 0)
    dist.broadcast(ids, 0)
    dist.broadcast(mask, 0)


def send_stop(device: str) -> None:
    import torch.distributed as dist

    dist.broadcast(torch.tensor([STOP, 0, 0, 0], dtype=torch.long, device=device), 0)


def receive_batch(device: str):
    """Workers: (ids, mask, max_new_tokens) of the next batch, or None to stop."""
    import torch.distributed as dist

    header = torch.empty(4, dtype=torch.long, device=device)
    dist.broadcast(header, 0)
    cmd, b, p, n = header.tolist()
    if cmd == STOP:
        return None
    ids = torch.empty(b, p, dtype=torch.long, device=device)
    mask = torch.empty(b, p, dtype=torch.long, device=device)
    dist.broadcast(ids, 0)
    dist.broadcast(mask, 0)
    return ids, mask, n
