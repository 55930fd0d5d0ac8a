#!/usr/bin/env bash
# The serving run on the lent GPU machine (config/gpu-serving.yaml): torch and transformers are there, but no
# network, no snakemake and no fastapi/uvicorn/openai. What travels: the wheels in .whl/ (pure Python, or
# cp312 manylinux) and the synthetic model's directory in .carry/models (config and tokenizer; its weights
# are drawn there). Calls, each right after the last (the machine stays warm 30 s):
#   bash benchmarks/device_serving.sh probe   # carry .whl: install, show what transformers serve takes
#   bash benchmarks/device_serving.sh start   # carry .whl .carry: the run in the background, followed ~9 min
#   bash benchmarks/device_serving.sh wait    # follow it to the end; results packed into $OUT each time
#   bash benchmarks/device_serving.sh serving "NVIDIA H200"   # the serving targets alone; the static ones
#                                             # too only if this card is not the one named (their results
#                                             # from an earlier call on that card are aggregated with these)
set -uo pipefail
STATE=results/device
SNAKEMAKE=(python3 -m snakemake --cores 16 --configfile config/gpu-serving.yaml --keep-going --scheduler greedy)
mkdir -p "$STATE" resources/models
[ -d /tmp/site/snakemake ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
  --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
export PATH=/tmp/site/bin:$PATH
running() { [ -f $STATE/pid ] && kill -0 "$(cat $STATE/pid)" 2>/dev/null; }
follow() {  # $1: seconds at most
  local end=$((SECONDS + $1))
  while [ $SECONDS -lt $end ] && running; do
    sleep 15; echo "$(date +%T) results: $(ls results/runs/*/*/*/*.json results/serving/*/*/*/*.json 2>/dev/null | wc -l)," \
      "last: $(tail -c 300 $STATE/run.log 2>/dev/null | grep -v '^$' | tail -1)"
  done
}
pack() {
  tar czf "$OUT/serving.tgz" results/benchmark_results.md results/summary.csv results/plots results/runs \
    results/serving results/calibration results/logs results/device results/reports resources/served/*/manifest.json \
    resources/engines/*/*/build_info.json 2>/dev/null
  ls -la "$OUT"
}
case "$1" in
probe)
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import transformers, torch, fastapi, uvicorn, openai, snakemake; print(transformers.__version__, torch.__version__)"
  which transformers; transformers serve --help 2>&1 | grep -E -- "--(device|dtype|host|port|continuous-batching)" ;;
start)
  for m in .carry/models/*; do [ -d resources/models/${m##*/} ] || cp -rL "$m" resources/models/; done
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$STATE/gpu.csv"
  date -u +%FT%TZ > $STATE/started
  setsid nohup "${SNAKEMAKE[@]}" > "$STATE/run.log" 2>&1 < /dev/null &
  echo $! > $STATE/pid
  follow "${2:-540}"
  tail -20 $STATE/run.log
  pack ;;
serving)
  for m in .carry/models/*; do [ -d resources/models/${m##*/} ] || cp -rL "$m" resources/models/; done
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$STATE/gpu.csv"
  date -u +%FT%TZ > $STATE/started
  if grep -q "$2" "$STATE/gpu.csv"; then targets=(serving); else targets=(serving all); fi
  echo "targets: ${targets[*]}" | tee $STATE/targets
  setsid nohup bash -c "for t in ${targets[*]}; do ${SNAKEMAKE[*]} \$t || exit; done" > "$STATE/run.log" 2>&1 < /dev/null &
  echo $! > $STATE/pid
  follow 530
  tail -20 $STATE/run.log
  pack ;;
wait)
  follow "${2:-540}"
  tail -40 $STATE/run.log
  pack ;;
esac
