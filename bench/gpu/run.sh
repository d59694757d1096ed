#!/usr/bin/env bash
# On the GPU machine, from the repository root, after pack.sh here (.gpu/ carried; output/phantom-base too, or it is
# trained there first):
#   bash bench/gpu/run.sh OUTDIR
# Needs python3 with a CUDA PyTorch (its torch/lib is the libtorch TorchSharp loads) and nvidia-smi. Every step has
# its own time limit and the run goes on after a failed step; each step's JSON lands in OUTDIR, and summarize.py
# turns them into the table of RESULTS.md. SMOKE=1 runs tiny sizes on whatever device there is (a check of the script);
# QUALITY=0 leaves out the real-data training runs, AUTOTUNE=0 the runs with cuDNN's autotuner.
set -u -o pipefail
out=${1:?usage: run.sh OUTDIR}
mkdir -p "$out"
exec > >(tee -a "$out/log.txt") 2>&1
smoke=${SMOKE:-0}

# The .NET runtime and the CLI, unpacked outside the repository.
work=$(mktemp -d)
tar -xJf .gpu/dotnet.tar.xz -C "$work" && tar -xJf .gpu/mriseg.tar.xz -C "$work" || { echo "run.sh: unpacking .gpu failed" >&2; exit 2; }
export DOTNET_ROOT=$work DOTNET_CLI_TELEMETRY_OPTOUT=1 NUGET_PACKAGES=$work/no-nuget
torch_lib=$(python3 -c 'import torch, os; print(os.path.join(os.path.dirname(torch.__file__), "lib"))') || { echo "run.sh: python3 has no torch" >&2; exit 2; }
# The CUDA libraries of the pip wheels (nvidia/<name>/lib, nvidia/cu13/lib, ...), for libtorch_cuda.so's dependencies.
nvidia_libs=$(python3 -c 'import os, torch
site = os.path.dirname(os.path.dirname(torch.__file__))
print(":".join(sorted(d for d, _, _ in os.walk(os.path.join(site, "nvidia")) if os.path.basename(d) == "lib")))')
export LD_LIBRARY_PATH=$torch_lib:$nvidia_libs:${LD_LIBRARY_PATH:-}
export MRISEG_LIBTORCH_DIR=${MRISEG_LIBTORCH_DIR:-$torch_lib}   # preset: another libtorch (the smoke test uses the CPU one)
printf '#!/bin/sh\nexec "%s/dotnet" "%s/mriseg/mriseg.dll" "$@"\n' "$work" "$work" > "$work/mriseg-cli" && chmod +x "$work/mriseg-cli"
mriseg=$work/mriseg-cli

# Peak GPU memory of a step: nvidia-smi sampled every 50 ms, minus what was in use before it.
gpu_used() { nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits 2>/dev/null | head -1; }
step() {
  local name=$1 limit=$2; shift 2
  echo "== $name: $*"
  local before; before=$(gpu_used); before=${before:-0}
  local sampler=
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 50 > "$out/mem-$name.txt" 2>/dev/null & sampler=$!
  fi
  local start; start=$(date +%s.%N)
  timeout "$limit" "$@" > "$out/$name.json"
  local rc=$?
  local wall; wall=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
  [ -n "$sampler" ] && kill "$sampler" 2>/dev/null && wait "$sampler" 2>/dev/null
  local peak=null
  [ -s "$out/mem-$name.txt" ] && peak=$(sort -n "$out/mem-$name.txt" | tail -1) && peak=$((peak - before))
  echo "{\"step\":\"$name\",\"rc\":$rc,\"wall_s\":$wall,\"peak_gpu_mib\":$peak}" >> "$out/steps.jsonl"
  echo "== $name: rc $rc, $wall s, peak GPU memory ${peak} MiB over the $before MiB in use before"
}

{ nvidia-smi -L 2>&1; python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU")'; } > "$out/machine.txt" 2>&1
cat "$out/machine.txt"
cat .gpu/commit > "$out/commit.txt" 2>/dev/null
date -u +%Y-%m-%dT%H:%M:%SZ > "$out/date.txt"

if [ "$smoke" = 1 ]; then
  size=32; batches="2 4"; it=2; speed="--speed-size 32 --speed-batch 2"; dev=""; torch_device=cpu
else
  size=240; batches="8 32 64"; it=30; speed="--speed-size 240 --speed-batch 32"; dev="--device cuda"; torch_device=cuda
fi

step precision 150 $mriseg bench precision $dev --size 64 $speed --iterations 10 --json
# Both steps with libtorch's defaults, then both with the cuDNN autotuner on (ours and PyTorch's alike).
for b in $batches; do
  step "dp-$b" 150 $mriseg bench dp $dev --size $size --batch "$b" --iterations $it --json
  [ "${AUTOTUNE:-1}" = 1 ] && step "dp-$b-autotune" 150 $mriseg bench dp $dev --size $size --batch "$b" --iterations $it --cudnn-benchmark --json
done
step torch 240 python3 bench/gpu/torch_reference.py --size $size --batch $batches --iterations $it --warmup 3 --device $torch_device
[ "${AUTOTUNE:-1}" = 1 ] && step torch-autotune 240 python3 bench/gpu/torch_reference.py --size $size --batch $batches --iterations $it --warmup 3 --device $torch_device --cudnn-benchmark
if [ "$smoke" != 1 ] && [ "${QUALITY:-1}" = 1 ]; then
  if [ ! -f output/phantom-base/model.safetensors ]; then
    # The DP recipes' base model (README, Quality on real data), made here when it was not carried: about 30 s on a GPU.
    step phantoms 120 $mriseg phantoms --out "$work/phantoms" --sites 3 --patients 100
    step phantom-base 300 $mriseg train $dev --config configs/phantoms-base.json \
      --data "$work/phantoms/site-0,$work/phantoms/site-1,$work/phantoms/site-2" --out output/phantom-base
  fi
  # The whole ε = 8 recipe, every epoch, on each of the three folds of patients (the README's quality table).
  step quality-eps8 400 $mriseg bench quality $dev --data .gpu/data/brats_A,.gpu/data/brats_B --recipes brats-eps8 --folds 3 \
    --out "$out/quality-eps8-report.md"
  # Extra, when time allows: the non-private recipe (128x128, from scratch) on the same folds.
  step quality-nonprivate 200 $mriseg bench quality $dev --data .gpu/data/brats_A,.gpu/data/brats_B --recipes brats-nonprivate --folds 3 \
    --out "$out/quality-nonprivate-report.md"
fi
python3 bench/gpu/summarize.py "$out" | tee "$out/table.md"
