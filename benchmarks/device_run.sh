#!/usr/bin/env bash
# Runs the GPU matrix (config/gpu.yaml, engines baseline and compiled) on the lent GPU machine, which has
# torch and transformers but no network and no snakemake. What travels (64 MiB a call at most): the
# wheels in .whl/, the synthetic models' directories in .carry/models, and the embedded model's GGUF
# in two parts, one per call. Three calls or more, each right after the last (the machine stays warm 30 s):
#   bash benchmarks/device_run.sh synthetic  # carry .whl .carry/gguf1 .carry/models: the two synthetic
#                                            # shapes (the bar), then a kernel profile of each if done
#   bash benchmarks/device_run.sh matrix     # carry .carry/gguf2: the whole matrix, started in the background
#   bash benchmarks/device_run.sh wait       # follow it (again while it runs), profile once done; into $OUT
# On an H100 (2026-11-28) the synthetic part took 8 min and the rest 20 min: 29 of 30 device minutes.
# The trust run (issue 13): the two synthetic shapes at batch 1 and 16, baseline and compiled, twice (run a,
# then run b on the same builds), each run's report, and a compare of the two; two calls, the second at once:
#   bash benchmarks/device_run.sh trust        # carry .whl .carry/models; starts it, follows 560 s
#   bash benchmarks/device_run.sh trust-wait   # follows it to the end; everything under results/trust
# Issue 15 (one GPU; carry .whl .carry/models): `study` profiles the step with torch's and the project's kernels
# and measures the GEMV floors; `issue15` then `issue15-wait` (at once) run kernel_check, the floors, the compiled
# cells of config/gpu.yaml's synthetic shapes (bf16 and fp8, batch 1 and 16) and a profile of each shape: 17 to 20
# min on an H200 (2026-11-28, docs/results/nvidia-h200-kernels.md; `issue15-wait` twice if the first ends before
# the profiles). `check` (5 min) checks and times the kernels and profiles the step at the defaults, before
# spending a full run on a change.
# Each call leaves what is finished so far in $OUT, so a machine lost between calls loses no result.
set -uo pipefail
STATE=results/device
GGUF=resources/downloads/SmolLM2-135M-Instruct.Q4_1.gguf
GGUF_SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
SNAKEMAKE=(python3 -m snakemake --cores 16 --configfile config/gpu.yaml --config 'engines=[baseline,compiled]'
           --keep-going --scheduler greedy)
mkdir -p "$STATE" resources/downloads/parts resources/models
[ -d /tmp/site/snakemake ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
  --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
# `python` for the rules' shell commands: a wrapper, not a symlink (a symlink loses the environment).
mkdir -p /tmp/bin && printf '#!/bin/sh\nexec %s "$@"\n' "$(command -v python3)" > /tmp/bin/python && chmod +x /tmp/bin/python
export PATH=/tmp/bin:/tmp/site/bin:$PATH

running() { [ -f $STATE/pid ] && kill -0 "$(cat $STATE/pid)" 2>/dev/null; }
start() {  # $1: log name; the rest: snakemake targets
  local name=$1; shift
  setsid nohup "${SNAKEMAKE[@]}" "$@" > "$STATE/$name.log" 2>&1 < /dev/null &
  echo $! > $STATE/pid
}
follow() {  # $1: seconds at most
  local end=$((SECONDS + $1))
  while [ $SECONDS -lt $end ] && running; do
    sleep 10; echo "$(date +%T) results: $(ls results/runs/*/*/*/*.json $STATE/*.json 2>/dev/null | wc -l)," \
      "last log line: $(tail -c 300 $STATE/*.log 2>/dev/null | grep -v '^$' | tail -1)"
  done
}
pack() {  # $1: archive name
  tar czf "$OUT/$1.tgz" results/trust results/issue15 results/benchmark_results.md results/summary.csv results/plots results/runs \
    results/calibration results/reference results/logs results/device resources/engines/*/*/build_info.json \
    2>/dev/null
  ls -la "$OUT"
}
profile() {  # the compiled decode step of each synthetic shape, kernel by kind, once (benchmarks/profile_step.py)
  for m in 8b 1b; do   # at most 2 x 90 s: the calls above leave room for it inside 600 s
    [ -f $STATE/profile-$m.json ] && continue
    timeout 90 python3 benchmarks/profile_step.py --model-dir resources/models/llama-$m \
      --artifact resources/engines/llama-$m/compiled --calibration results/calibration/bandwidth.json \
      --out $STATE/profile-$m.json > $STATE/profile-$m.log 2>&1; tail -30 $STATE/profile-$m.log
  done
}
SYN=(results/runs/llama-{1b,8b}/{baseline,compiled}/tok64/bs1.json)
TRUST=(results/runs/llama-{1b,8b}/{baseline,compiled}/tok64/bs{1,16}.json)
trust_run() {  # $1: a or b. Its result files, records and logs go to results/trust/$1; the builds stay.
  "${SNAKEMAKE[@]}" "${TRUST[@]}"
  local rc=$? dir=results/trust/$1
  mkdir -p $dir/logs && mv results/runs $dir/ && mv results/logs/runs $dir/logs/
  python3 -m inference_optim_llm aggregate $dir/runs/*/*/*/*.json --calibration results/calibration/bandwidth.json \
    --out-md $dir/benchmark_results.md --out-csv $dir/summary.csv --plots-dir $dir/plots \
    --title "Trust run $1 (issue 13)"
  return $rc
}
floors() {  # $@: variants, each KERNEL or KERNEL-fp8 (benchmarks/gemv_floor.py), for the 1B and 8B shapes
  local m f v k w
  for m in 1b 8b; do
    f=$([ $m = 1b ] && echo llama-3.2-1b || echo llama-3.1-8b)
    for v in "$@"; do
      k=${v%-fp8}; w=default; [ "$v" = "$k" ] || w=fp8
      timeout 120 python3 benchmarks/gemv_floor.py --preset $f --kernel $k --weights $w > $STATE/floor-$m-$v.json \
        2>> $STATE/floor-$m-$k.log
    done
  done
}
study_job() {  # issue 15: GEMV floors and the compiled step's profile, torch's kernels against kernels.py's
  local name m args
  python3 -m inference_optim_llm calibrate --output $STATE/bandwidth.json --device cuda > $STATE/calibrate.log 2>&1
  floors torch triton torch-fp8 triton-fp8
  # name | model | profile_step arguments
  while read -r name m args; do
    timeout 200 python3 benchmarks/profile_step.py --model-dir resources/models/llama-$m \
      --calibration $STATE/bandwidth.json --out $STATE/profile-$name.json $args > $STATE/profile-$name.log 2>&1
  done <<'RUNS'
1b-torch 1b --option kernels=torch --option prefill=eager
1b-triton 1b --option kernels=triton --option prefill=compiled
8b-torch 8b --option kernels=torch --option prefill=eager
8b-triton 8b --option kernels=triton --option prefill=compiled
1b-triton-fp8 1b --option kernels=triton --weights fp8
8b-triton-fp8 8b --option kernels=triton --weights fp8
1b-triton-bs16 1b --option kernels=triton --option prefill=compiled --batch 16
RUNS
  date -u +%FT%TZ > $STATE/study-end
}
check_job() {  # issue 15: the kernels on this card before a full run: checked, timed alone, the step profiled
  local m
  python3 -m inference_optim_llm calibrate --output $STATE/bandwidth.json --device cuda > $STATE/calibrate.log 2>&1
  python3 benchmarks/kernel_check.py > $STATE/kernel_check.json 2> $STATE/kernel_check.log
  floors torch triton fused
  for m in 1b 8b; do   # at the defaults, compiled here (no build artifact)
    timeout 200 python3 benchmarks/profile_step.py --model-dir resources/models/llama-$m \
      --calibration $STATE/bandwidth.json --out $STATE/profile-$m.json > $STATE/profile-$m.log 2>&1
  done
  date -u +%FT%TZ > $STATE/check-end
}
K15=(results/runs/llama-{1b,8b}/compiled/tok64/bs{1,16}{,-fp8}.json)
issue15_job() {  # issue 15's run on one card: the kernels checked, the GEMV floors, the compiled cells, profiles
  local m
  date -u +%FT%TZ > $STATE/issue15-start
  python3 benchmarks/kernel_check.py > $STATE/kernel_check.json 2> $STATE/kernel_check.log
  floors torch triton fused triton-fp8
  "${SNAKEMAKE[@]}" "${K15[@]}" > $STATE/issue15-snakemake.log 2>&1
  python3 -m inference_optim_llm aggregate results/runs/*/*/*/*.json --calibration results/calibration/bandwidth.json \
    --out-md results/issue15/benchmark_results.md --out-csv results/issue15/summary.csv --plots-dir results/issue15/plots \
    --title "compiled at its defaults on the synthetic shapes (issue 15)" > $STATE/aggregate.log 2>&1
  for m in 1b 8b; do   # the step at the defaults, from the build's cache
    timeout 150 python3 benchmarks/profile_step.py --model-dir resources/models/llama-$m \
      --artifact resources/engines/llama-$m/compiled --calibration results/calibration/bandwidth.json \
      --out $STATE/profile-$m.json > $STATE/profile-$m.log 2>&1
  done
  date -u +%FT%TZ > $STATE/issue15-end
}
case "$1" in
issue15)   # on one GPU; carry .whl .carry/models. Starts the job and follows it; `issue15-wait` follows again
  for m in .carry/models/llama-{1b,8b}; do [ -d resources/models/${m##*/} ] || cp -rL "$m" resources/models/; done
  nvidia-smi --query-gpu=name,memory.total,driver_version,power.limit,clocks.max.sm --format=csv | tee "$STATE/gpu.csv"
  setsid nohup bash benchmarks/device_run.sh issue15-job > "$STATE/issue15.log" 2>&1 < /dev/null &
  echo $! > $STATE/pid
  follow "${2:-560}"
  pack issue15 ;;
issue15-job) issue15_job ;;
issue15-wait)
  follow "${2:-560}"
  tail -20 $STATE/issue15-snakemake.log
  pack issue15 ;;
study)   # issue 15, on one GPU; carry .whl .carry/models. Background job, followed; `study-wait` follows again
  for m in .carry/models/llama-{1b,8b}; do [ -d resources/models/${m##*/} ] || cp -rL "$m" resources/models/; done
  nvidia-smi --query-gpu=name,memory.total,driver_version,power.limit,clocks.max.sm --format=csv | tee "$STATE/gpu.csv"
  date -u +%FT%TZ > $STATE/study-start
  setsid nohup bash benchmarks/device_run.sh study-job > "$STATE/study.log" 2>&1 < /dev/null &
  echo $! > $STATE/pid
  follow "${2:-560}"
  pack study ;;
study-job) study_job ;;
check)   # issue 15, on one GPU; carry .whl .carry/models: kernel_check, GEMV floors, profiles (5 min)
  for m in .carry/models/llama-{1b,8b}; do [ -d resources/models/${m##*/} ] || cp -rL "$m" resources/models/; done
  nvidia-smi --query-gpu=name,memory.total,driver_version,power.limit,clocks.max.sm --format=csv | tee "$STATE/gpu.csv"
  date -u +%FT%TZ > $STATE/check-start
  setsid nohup bash benchmarks/device_run.sh check-job > "$STATE/check.log" 2>&1 < /dev/null &
  echo $! > $STATE/pid
  follow "${2:-560}"
  pack check ;;
check-job) check_job ;;
study-wait)
  follow "${2:-560}"
  pack study ;;
synthetic)
  cp .carry/gguf1/* resources/downloads/parts/
  for m in .carry/models/*; do [ -d resources/models/${m##*/} ] || cp -rL "$m" resources/models/; done
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$STATE/gpu.csv"
  start synthetic "${SYN[@]}"
  follow 380
  tail -5 $STATE/synthetic.log
  pack synthetic
  running || { profile; pack synthetic; } ;;
matrix)
  if [ ! -f $GGUF ]; then
    [ -n "$(ls resources/downloads/parts/)" ] || { echo "part 1 of the GGUF is not here: the machine was not warm"; exit 3; }
    cat resources/downloads/parts/* .carry/gguf2/* > $GGUF.part && mv $GGUF.part $GGUF
  fi
  echo "$GGUF_SHA256  $GGUF" | sha256sum -c || exit 4
  while running; do sleep 5; done   # the synthetic run, if it is still going
  start matrix
  follow 540
  pack matrix ;;
trust)
  for m in .carry/models/*; do [ -d resources/models/${m##*/} ] || cp -rL "$m" resources/models/; done
  nvidia-smi --query-gpu=name,memory.total,driver_version,power.limit,clocks.max.sm --format=csv | tee "$STATE/gpu.csv"
  setsid nohup bash benchmarks/device_run.sh trust-job > "$STATE/trust.log" 2>&1 < /dev/null &
  echo $! > $STATE/pid
  follow 560
  pack trust ;;
trust-job)
  date -u +%FT%TZ > $STATE/trust-start
  trust_run a; trust_run b
  python3 -m inference_optim_llm compare results/trust/a results/trust/b --output results/trust/compare.md
  date -u +%FT%TZ > $STATE/trust-end ;;
x2)   # issue 14, on nvidia-h200-x2: config/gpu-x2.yaml; carry .whl .carry/models
  for m in .carry/models/*; do [ -d resources/models/${m##*/} ] || cp -rL "$m" resources/models/; done
  nvidia-smi --query-gpu=index,name,memory.total,driver_version,power.limit,clocks.max.sm --format=csv | tee "$STATE/gpu.csv"
  nvidia-smi topo -m > "$STATE/topo.txt" 2>&1
  date -u +%FT%TZ > $STATE/x2-start
  # --cores 8 (each job takes 8 threads): one job at a time. `gpu=2` alone would let two 1-GPU jobs run
  # side by side, both on GPU 0 (a job with gpus 1 uses `cuda`, the first visible GPU).
  setsid nohup python3 -m snakemake --cores 8 --resources gpu=2 --configfile config/gpu-x2.yaml --keep-going \
    --scheduler greedy > "$STATE/x2.log" 2>&1 < /dev/null &
  echo $! > $STATE/pid
  follow "${2:-560}"
  pack x2 ;;
x2-wait)
  follow "${2:-560}"
  running || date -u +%FT%TZ > $STATE/x2-end
  tail -40 $STATE/x2.log
  pack x2 ;;
trust-wait)
  follow "${2:-560}"
  tail -40 $STATE/trust.log
  pack trust ;;
wait)
  follow "${2:-380}"
  tail -30 $STATE/matrix.log
  pack results
  running || { profile; pack results; } ;;
esac
