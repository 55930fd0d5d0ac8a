"""What fp8 weights cost in quality (issue 15): a shipped text's perplexity under each weight storage, through
the compiled engine's own forward (the same products its decode step runs), on a real model.

    python benchmarks/perplexity.py --model-dir resources/models/smollm2-135m --device cpu \\
        --runs float32:default float32:fp8 bfloat16:default bfloat16:fp8 > perplexity.json

Each run: DTYPE:WEIGHTS. The text (data/perplexity.txt, written for this project) is tokenized once and read
in one pass from the first token; perplexity is exp of the mean negative log-likelihood of each next token.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch


def perplexity(model_dir: Path, text: str, dtype: str, weights: str, device: str) -> dict:
    from transformers import AutoConfig

    from inference_optim_llm.engines.compiled import FusedLlama
    from inference_optim_llm.models import load_tokenizer
    from inference_optim_llm.models import weights as weights_of

    tok = load_tokenizer(model_dir)
    ids = tok(text, return_tensors="pt").input_ids.to(device)
    cfg = AutoConfig.from_pretrained(model_dir)
    T = ids.shape[1]
    net = FusedLlama(cfg, weights_of(model_dir, device, dtype), 1, T, device, weights=weights)
    with torch.no_grad():
        logits = net.logits(ids)[0, :-1]
    nll = torch.nn.functional.cross_entropy(logits, ids[0, 1:]).item()
    return {"dtype": dtype, "weights": weights, "tokens": T, "mean_nll": nll, "perplexity": math.exp(nll)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model-dir", required=True, type=Path)
    ap.add_argument("--text", type=Path, default=Path(__file__).resolve().parent.parent / "data" / "perplexity.txt")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--runs", nargs="+", default=["bfloat16:default", "bfloat16:fp8"],
                    help="DTYPE:WEIGHTS pairs, e.g. float32:default bfloat16:fp8")
    a = ap.parse_args(argv)
    text = a.text.read_text()
    out = {"model_dir": str(a.model_dir), "text": str(a.text), "device": a.device, "torch": torch.__version__,
           "gpu": torch.cuda.get_device_name() if a.device.startswith("cuda") else None,
           "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "runs": []}
    for run in a.runs:
        dtype, _, weights = run.partition(":")
        out["runs"].append(perplexity(a.model_dir, text, dtype, weights or "default", a.device))
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
