#!/usr/bin/env bash
# Here (a machine with the .NET SDK): builds what run.sh needs on a GPU machine that has PyTorch with CUDA but no .NET,
# into .gpu/ (git-ignored): the mriseg CLI published without a libtorch (the GPU machine's PyTorch provides a CUDA one),
# the .NET runtime, and the real BraTS slices of ../shared/data (never committed; they travel with the run only).
# The ε = 8 recipe also needs output/phantom-base (README, "Quality on real data"): carry it beside .gpu, or run.sh
# trains it on the GPU first.
set -euo pipefail
cd "$(dirname "$0")/../.."
data=${MRISEG_REAL_DATA:-../shared/data}/brats20-slices
[ -d "$data/brats_A" ] && [ -d "$data/brats_B" ] || { echo "pack.sh: no $data/brats_A and brats_B (set MRISEG_REAL_DATA)" >&2; exit 2; }
[ -f output/phantom-base/model.safetensors ] || echo "pack.sh: no output/phantom-base here: run.sh will train it on the GPU first" >&2

rm -rf .gpu && mkdir -p .gpu/data
dotnet publish tools/MriSeg.Cli -c Release -r linux-x64 --self-contained false -p:MriSegCopyCpuLibTorch=false -o .gpu/mriseg -nologo -v quiet
rm -f .gpu/mriseg/*.pdb .gpu/mriseg/*.xml
tar -cJf .gpu/mriseg.tar.xz -C .gpu mriseg && rm -rf .gpu/mriseg

# The shared runtime only (no SDK, no ASP.NET Core: the CLI needs neither).
root=$(dirname "$(readlink -f "$(command -v dotnet)")")
runtime=$(dotnet --list-runtimes | awk '$1 == "Microsoft.NETCore.App" { v = $2 } END { print v }')
tar -cJf .gpu/dotnet.tar.xz -C "$root" dotnet host "shared/Microsoft.NETCore.App/$runtime"

cp -r "$data/brats_A" "$data/brats_B" .gpu/data/
git rev-parse HEAD > .gpu/commit
du -sh .gpu .gpu/* output/phantom-base 2>/dev/null
