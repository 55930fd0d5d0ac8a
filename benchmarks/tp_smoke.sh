#!/usr/bin/env bash
# compiled on the synthetic Llama-3.1-8B shapes at gpus 1 and 2 (tensor parallel, NCCL, CUDA graphs), batch 1,
# through the benchmark CLI, on a lent 2-GPU machine without network: carry .whl and .carry/models.
#   bash benchmarks/tp_smoke.sh   (results and logs into $OUT)
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv | tee "$OUT/gpus.csv"
nvidia-smi topo -m > "$OUT/topo.txt" 2>&1
for g in 1 2; do
  spec='{"model":"llama-8b","model_dir":".carry/models/llama-8b","engine":"compiled","prompt_set":"tok64",
    "prompt_spec":{"tokens":64,"count":4},"batch_size":1,"max_new_tokens":200,"gpus":'$g',"repetitions":2,
    "warmup":1,"device":"cuda","dtype":"bfloat16","min_measure_s":3,"ci_target_rel":0.02,"max_measure_s":20}'
  timeout 200 python3 -m inference_optim_llm bench --spec "$spec" --output "$OUT/llama-8b-bs1-tp$g.json" \
    > "$OUT/llama-8b-bs1-tp$g.log" 2>&1
  echo "gpus $g: rc $?"; tail -3 "$OUT/llama-8b-bs1-tp$g.log"
done
