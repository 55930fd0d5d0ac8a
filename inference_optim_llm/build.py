"""build_engine: the cached artifact an engine needs before its benchmark jobs.

- compiled: compiles the decode step for every (batch size, cache length) the matrix uses for the
  model into an inductor cache directory; benchmark jobs copy it and skip code generation.
- trtllm: builds the TensorRT-LLM engine (trtllm_build.py).
"""
from __future__ import annotations

import os
import time
from pathlib import Path

from inference_optim_llm import io
from inference_optim_llm.intermediates import check_engine_artifact
from inference_optim_llm.hostfacts import log, resolve_device, resolve_dtype
from inference_optim_llm.runner import check_context


def compiled_shapes(spec: dict, tokenizer) -> list[tuple[int, int]]:
    """The (batch size, longest prompt) pairs the benchmark jobs of this model will compile. Every
    prompt set is checked against the model's context first: no compile time spent on a shape that
    its benchmark job would refuse."""
    from inference_optim_llm.prompts import load_prompt_set

    longest = set()
    for name, prompt_spec in spec["prompt_sets"].items():
        ps = load_prompt_set(name, prompt_spec, tokenizer, spec["seed"])
        check_context(ps, spec["max_new_tokens"], spec["model_dir"])
        longest.add(ps.longest)
    return sorted({(b, p) for b in spec["batch_sizes"] for p in longest})


def build_compiled(spec: dict, out_dir: Path, workers: int | None = None) -> dict:
    """Each shape compiles in its own process, exactly as a benchmark job will, into the artifact's
    inductor cache directory (FX graphs, AOT autograd results, generated kernels). Jobs copy that
    directory and compile from it: cache hits instead of code generation (a warm-up several times
    shorter: docs/measurements/README.md). Code generation is CPU work, so shapes
    compile side by side, `workers` at a time (the build job's threads); inductor
    writes its cache entries atomically, as it does for the ranks of one training job."""
    import multiprocessing
    from concurrent.futures import ThreadPoolExecutor

    import torch

    from inference_optim_llm.engines.compiled import INDUCTOR_DIR, cache_len, option_defaults
    from inference_optim_llm.models import load_tokenizer

    device = resolve_device(spec["device"])
    tok = load_tokenizer(Path(spec["model_dir"]), spec.get("trust_remote_code", False))
    shapes = {}
    for batch, longest in compiled_shapes(spec, tok):
        prefill = {**option_defaults(device), **spec.get("engine_options", {})}["prefill"]
        shapes.setdefault((batch, cache_len(longest, spec["max_new_tokens"], prefill)), longest)
    cache_dir = str(Path(out_dir).resolve() / INDUCTOR_DIR)
    spawn = multiprocessing.get_context("spawn")   # a fresh interpreter per shape, as a benchmark job is
    running: set = set()

    def compile_shape(shape):
        (batch, L), longest = shape
        t = time.perf_counter()
        receive, send = spawn.Pipe(duplex=False)
        proc = spawn.Process(target=_compile_worker, args=(spec, cache_dir, batch, longest, send), daemon=True)
        proc.start()
        send.close()
        running.add(proc)
        try:
            status, message = receive.recv() if receive.poll(None) else ("error", "no answer")
        except EOFError:
            status, message = "error", "the worker died without an answer"
        finally:
            proc.join()
            running.discard(proc)
        if status == "error":
            raise RuntimeError(f"compiling batch {batch}, cache {L} failed (exit {proc.exitcode}): {message}")
        # oom: this shape does not fit; its benchmark job records the OOM, the other shapes go on
        compile_s = time.perf_counter() - t
        log(f"compiled batch {batch}, cache {L}: {status}, {compile_s:.1f} s" + (f" ({message})" if message else ""))
        return {"batch_size": batch, "cache_len": L, "status": status, "compile_s": compile_s}

    items = sorted(shapes.items())
    workers = max(1, min(workers or 1, len(items)))
    t = time.perf_counter()
    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        done = list(pool.map(compile_shape, items))
    except BaseException:   # interrupted (SIGTERM, Ctrl-C) or failed: stop the other compiling processes
        for proc in list(running):
            proc.terminate()
            proc.join(10)
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    if workers > 1:  # out of memory beside other compiling processes is not out of memory alone: retry alone
        for i, item in enumerate(items):
            if done[i]["status"] == "oom":
                log(f"batch {item[0][0]}, cache {item[0][1]}: out of memory beside other shapes; again alone")
                done[i] = compile_shape(item)
    return {"engine": "compiled", "device": device, "dtype": resolve_dtype(spec["dtype"], device),
            "torch": torch.__version__, "shapes": done, "workers": workers,
            "build_s": time.perf_counter() - t,
            "cache_bytes": sum(p.stat().st_size for p in (Path(out_dir) / INDUCTOR_DIR).rglob("*") if p.is_file())}


# The compiled step's generation, part of its build key: 2 since its Triton kernels and compiled prefill became
# the defaults on CUDA (an older artifact holds other graphs and other cache lengths); 3 since decode attention
# took the rotary embedding and the cache write, and gate/up SiLU * up. Bump when the step's graph changes.
STEP = 3


def compiled_build_key(options: dict) -> dict:
    """Generated kernels belong to one torch and one GPU: both are part of the build's cache key (as
    seen where the workflow starts; inductor's own keys reject a mismatch, at compile cost)."""
    from inference_optim_llm.hostfacts import compute_capability, installed_version
    return {"torch_version": installed_version("torch"), "compute_capability": compute_capability(), "step": STEP}


def _compile_worker(spec: dict, cache_dir: str, batch: int, longest: int, send) -> None:
    """In a spawned process: compile one shape into the artifact's inductor cache, answer (status, message)."""
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache_dir   # before torch compiles anything in this process
    from inference_optim_llm.hostfacts import is_out_of_memory
    try:
        compile_one_shape(spec, batch, longest)
        send.send(("ok", ""))
    except Exception as e:
        log(f"batch {batch}: {type(e).__name__}: {e}")
        send.send(("oom" if is_out_of_memory(e) else "error", f"{type(e).__name__}: {str(e)[:300]}"))


def compile_one_shape(spec: dict, batch: int, longest: int) -> None:
    """Compile the decode step for one shape, as a benchmark job does (into $TORCHINDUCTOR_CACHE_DIR)."""
    from inference_optim_llm.engines.compiled import CompiledEngine
    from inference_optim_llm.models import load_tokenizer
    from inference_optim_llm.spec import shape_settings

    device = resolve_device(spec["device"])
    trust = spec.get("trust_remote_code", False)
    tok = load_tokenizer(Path(spec["model_dir"]), trust)
    engine = CompiledEngine(shape_settings(
        spec["model_dir"], "compiled", batch, longest, spec["max_new_tokens"], device,
        resolve_dtype(spec["dtype"], device), spec.get("engine_options", {}), seed=spec.get("seed", 0),
        trust_remote_code=trust))
    engine.load()
    # The full output length: the step reads its token from the output buffer, whose stride (the
    # length) is part of the compiled graph's cache key.
    engine.generate([[tok.bos_token_id or 1] * longest] * batch, spec["max_new_tokens"])
    engine.close()


BUILD_SPEC_KEYS = {"model_dir", "batch_sizes", "prompt_sets", "max_new_tokens", "seed", "device", "dtype",
                   "engine_options", "strict", "trust_remote_code", "trtllm_version", "compute_capability",
                   "installed_trtllm", "torch_version", "step"}


def check_build_spec(engine: str, spec: dict) -> None:
    """A build spec (from the workflow, or typed by hand) within the config's bounds; errors name the key."""
    from inference_optim_llm.engines import build_function, check_options
    from inference_optim_llm.spec import BenchSpec

    build_function(engine)   # an engine without a build step is an error naming those with one
    if not isinstance(spec, dict) or set(spec) - BUILD_SPEC_KEYS or "model_dir" not in spec:
        raise ValueError(f"build spec: unknown keys {sorted(set(spec) - BUILD_SPEC_KEYS)} or no model_dir "
                         f"(known: {', '.join(sorted(BUILD_SPEC_KEYS))})")
    if not isinstance(spec.get("batch_sizes"), list):   # empty: no 1-GPU cell (each tensor-parallel job compiles)
        raise ValueError("build spec batch_sizes: a list of batch sizes expected")
    if not isinstance(spec.get("prompt_sets"), dict) or not spec["prompt_sets"]:
        raise ValueError("build spec prompt_sets: a non-empty mapping of prompt sets expected")
    for batch in spec["batch_sizes"]:
        for name, prompt_spec in spec["prompt_sets"].items():   # the benchmark spec's checks, for each shape
            BenchSpec(model="build", model_dir=spec["model_dir"], engine=engine, prompt_set=name,
                      prompt_spec=prompt_spec, batch_size=batch, max_new_tokens=spec.get("max_new_tokens"),
                      seed=spec.get("seed", 0), device=spec.get("device", "auto"), dtype=spec.get("dtype", "auto"))
    check_options(engine, spec.get("engine_options", {}))


def build(engine: str, spec: dict, out_dir: Path, workers: int | None = None) -> None:
    """Build into a temporary directory beside out_dir, then rename: never a half-built artifact, and
    never over a directory this tool did not make."""
    check_build_spec(engine, spec)
    out_dir = Path(out_dir)
    io.check_replaceable(out_dir, "engine artifact")
    from inference_optim_llm.engines import build_function

    with io.building_dir(out_dir, check=check_engine_artifact) as tmp:   # checked as it will be where read
        info = build_function(engine)(spec, tmp, workers)
        info["spec"] = spec
        io.write_json(tmp / "build_info.json", info)
