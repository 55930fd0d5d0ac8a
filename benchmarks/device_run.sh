#!/usr/bin/env bash
# Runs the GPU matrix (config/gpu.yaml) on the lent GPU machine, which has torch and transformers but
# no network and no snakemake: wheels travel in .whl/, the embedded model's GGUF in two parts.
#   bash benchmarks/device_run.sh start   # prepare, start snakemake in the background, follow it
#   bash benchmarks/device_run.sh wait    # follow it until done, then pack results into $OUT
set -euo pipefail
STATE=results/device
mkdir -p "$STATE" resources/downloads
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
# `python` for the rules' shell commands: a wrapper, not a symlink (a symlink loses the venv).
mkdir -p /tmp/bin && printf '#!/bin/sh\nexec %s "$@"\n' "$(command -v python3)" > /tmp/bin/python && chmod +x /tmp/bin/python
export PATH=/tmp/bin:/tmp/site/bin:$PATH
follow() {  # $1: seconds at most
  local end=$((SECONDS + $1))
  while [ $SECONDS -lt $end ] && kill -0 "$(cat $STATE/pid)" 2>/dev/null; do
    sleep 15; echo "$(date +%T) results: $(ls results/runs/*/*/*/*.json 2>/dev/null | wc -l)"
  done
}
case "$1" in
start)
  gguf=resources/downloads/SmolLM2-135M-Instruct.Q4_1.gguf
  [ -f $gguf ] || cat .carry/gguf1/* .carry/gguf2/* > $gguf
  sha256sum $gguf
  setsid nohup python3 -m snakemake --cores 16 --configfile config/gpu.yaml --keep-going \
    --scheduler greedy > $STATE/snakemake.log 2>&1 < /dev/null &
  echo $! > $STATE/pid
  follow "${2:-420}"
  tail -5 $STATE/snakemake.log ;;
wait)
  follow "${2:-540}"
  tail -25 $STATE/snakemake.log
  tar czf "$OUT/results.tgz" results/benchmark_results.md results/summary.csv results/plots results/runs \
    results/calibration results/reference results/logs resources/engines/*/*/build_info.json 2>/dev/null || true
  ls -la "$OUT" ;;
esac
