#!/usr/bin/env bash
# On the GPU machine, after bench/gpu/pack.sh here (.gpu/ carried): many `mriseg bench quality` runs of recipe variants
# at once on one GPU, for seed sweeps that would take days on this CPU.
#   bash bench/gpu/sweep.sh RUNS OUTDIR
# RUNS: one run a line, "NAME FOLD_SEED [key=value ...]": the base recipe (RECIPE, default configs/brats-nonprivate.json)
# with each dotted key set to its JSON value (e.g. "w8-s2 1 seed=2 model.base_width=8"), scored by 3-fold
# cross-validation with that fold seed. WORKERS runs at once (default 8); a run not started START_BY seconds after the
# first is skipped, so that the whole fits a device call. OUTDIR gets summary.md (every run's table row and folds, then
# the mean ± std over the runs that share a name up to "-s<seed>") and runs.tar.xz (each run's log, .md and .json).
set -u -o pipefail
runs=${1:?usage: sweep.sh RUNS OUTDIR}; out=${2:?usage: sweep.sh RUNS OUTDIR}
recipe=${RECIPE:-configs/brats-nonprivate.json}; workers=${WORKERS:-8}; start_by=${START_BY:-300}
device=${DEVICE:-cuda}   # DEVICE=cpu (with MRISEG_LIBTORCH_DIR at a CPU libtorch) checks the script on a machine without a GPU
mkdir -p "$out"
work=$(mktemp -d)
tar -xJf .gpu/dotnet.tar.xz -C "$work" && tar -xJf .gpu/mriseg.tar.xz -C "$work" || { echo "sweep.sh: unpacking .gpu failed" >&2; exit 2; }
export DOTNET_ROOT=$work DOTNET_CLI_TELEMETRY_OPTOUT=1 NUGET_PACKAGES=$work/no-nuget
torch_lib=${MRISEG_LIBTORCH_DIR:-$(python3 -c 'import torch, os; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')}
nvidia_libs=$(python3 -c 'import os, torch
site = os.path.dirname(os.path.dirname(torch.__file__))
print(":".join(sorted(d for d, _, _ in os.walk(os.path.join(site, "nvidia")) if os.path.basename(d) == "lib")))' 2>/dev/null)
export LD_LIBRARY_PATH=$torch_lib:$nvidia_libs:${LD_LIBRARY_PATH:-} MRISEG_LIBTORCH_DIR=$torch_lib
mkdir -p "$work/recipes" "$work/runs"

# The variants, written before the clock starts.
python3 - "$recipe" "$runs" "$work/recipes" <<'PY' || exit 2
import json, sys
base, runs, folder = sys.argv[1:]
for line in open(runs):
    fields = line.split()
    if not fields or fields[0].startswith("#"):
        continue
    recipe = json.load(open(base))
    for change in fields[2:]:
        key, value = change.split("=", 1)
        *parents, leaf = key.split(".")
        node = recipe
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = json.loads(value)
    json.dump(recipe, open(f"{folder}/{fields[0]}.json", "w"), indent=1)
PY

export work out device start_by data=.gpu/data/brats_A,.gpu/data/brats_B t0=$(date +%s)
run_one() {
  local name=$1 fold_seed=$2 tag=$1-f$2 started=$(( $(date +%s) - t0 ))
  [ "$started" -gt "$start_by" ] && { echo "skipped $tag (${started} s after the first)" >> "$work/skipped.txt"; return; }
  "$work/dotnet" "$work/mriseg/mriseg.dll" bench quality --device "$device" --data "$data" --recipes "$work/recipes/$name.json" \
    --folds 3 --seed "$fold_seed" --out "$work/runs/$tag.md" > "$work/runs/$tag.log" 2>&1
  echo "$tag rc $? after $(( $(date +%s) - t0 - started )) s" >> "$work/runs/$tag.log"
}
export -f run_one
grep -v '^#' "$runs" | awk 'NF { print $1, $2 }' | xargs -P "$workers" -L 1 bash -c 'run_one "$0" "$1"'

python3 - "$work/runs" "$work/skipped.txt" > "$out/summary.md" <<'PY'
import glob, json, os, re, statistics, sys
folder, skipped = sys.argv[1:]
print("| run | fold seed | Dice | per fold |\n|---|---|---|---|")
groups = {}
for path in sorted(glob.glob(f"{folder}/*.json")):
    report = json.load(open(path))
    for r in report["recipes"]:
        folds = "/".join(f"{f['dice']:.3f}" for f in r["folds"])
        print(f"| {r['recipe']} | {report['seed']} | {r['dice']['mean']:.3f} | {folds} |")
        groups.setdefault((re.sub(r"-s\d+$", "", r["recipe"]), report["seed"]), []).append(r["dice"]["mean"])
print("\n| variant | fold seed | runs | mean Dice over runs | std |\n|---|---|---|---|---|")
for (variant, seed), dice in sorted(groups.items()):
    std = statistics.stdev(dice) if len(dice) > 1 else float("nan")
    print(f"| {variant} | {seed} | {len(dice)} | {statistics.mean(dice):.4f} | {std:.4f} |")
if os.path.exists(skipped):
    print("\n" + open(skipped).read())
PY
tar -cJf "$out/runs.tar.xz" -C "$work" runs recipes
cat "$out/summary.md"
