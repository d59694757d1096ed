#!/usr/bin/env python3
"""Turns the files bench/gpu/run.sh wrote into OUTDIR into the Markdown table of RESULTS.md (stdout)."""

import json
import os
import sys


def last_json(path):
    """The last JSON object line of a file (the CLI prints its result last under --json), or None."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = [l for l in f.read().splitlines() if l.startswith("{")]
    except OSError:
        return None
    return json.loads(lines[-1]) if lines else None


def json_lines(path):
    try:
        with open(path, encoding="utf-8") as f:
            return [json.loads(l) for l in f.read().splitlines() if l.startswith("{")]
    except OSError:
        return []


def text(path, default="?"):
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip() or default
    except OSError:
        return default


def fmt(value, spec):
    return "n/a" if value is None else format(value, spec)


def main(out):
    steps = {s["step"]: s for s in json_lines(os.path.join(out, "steps.jsonl"))}
    machine = text(os.path.join(out, "machine.txt")).splitlines()
    print(f"GPU check of commit {text(os.path.join(out, 'commit.txt'))[:12]} on {text(os.path.join(out, 'date.txt'))}")
    for line in machine:
        print(f"- {line}")
    failed = [f"{name} (exit {s['rc']})" for name, s in steps.items() if s["rc"] != 0]
    print(f"- steps that failed: {', '.join(failed) if failed else 'none'}")

    dp_all = [r for r in (last_json(os.path.join(out, f)) for f in os.listdir(out) if f.startswith("dp-") and f.endswith(".json")) if r]
    for autotune in (False, True):
        dp_rows = sorted((r for r in dp_all if bool(r.get("cudnn_benchmark")) == autotune), key=lambda r: r["batch"])
        if not dp_rows:
            continue
        suffix = "-autotune" if autotune else ""
        torch_rows = {r["batch"]: r for r in json_lines(os.path.join(out, f"torch{suffix}.json"))}
        size = dp_rows[0]["size"]
        setting = "cuDNN autotuner on (cudnn.benchmark) for both" if autotune else "libtorch's defaults (cudnn.benchmark off)"
        print(f"\nTraining step of the reference U-Net (2,164,145 parameters) at {size}x{size}, float32 with TF32 convolutions (the default), "
              f"{setting}; samples/s from median step times; ours = TorchSharp, DP = folded per-patient gradients, clipping, secure noise.\n")
        print("| batch | PyTorch non-private | ours non-private | ours DP | DP / ours non-private | ours / PyTorch non-private | peak GPU MiB, ours (DP + non-private process) | peak GPU MiB, PyTorch (allocated / reserved) |")
        print("|---|---|---|---|---|---|---|---|")
        for r in dp_rows:
            b = r["batch"]
            t = torch_rows.get(b, {})
            ref = t.get("samples_per_second")
            ours = r["non_private_samples_per_second"]
            peak = steps.get(f"dp-{b}{suffix}", {}).get("peak_gpu_mib")
            print(f"| {b} | {fmt(ref, '.1f')} | {ours:.1f} | {r['dp_samples_per_second']:.1f} | **{r['ratio']:.3f}** | "
                  f"**{fmt(ours / ref if ref else None, '.3f')}** | {fmt(peak, 'd')} | "
                  f"{fmt(t.get('peak_allocated_mib'), '.0f')} / {fmt(t.get('peak_reserved_mib'), '.0f')} |")

    precision = last_json(os.path.join(out, "precision.json"))
    if precision:
        print(f"\nPer-patient gradients on {precision['device']} at {precision['size']}x{precision['size']} (reference U-Net, 4 patients of 1-3 slices), "
              "against float64:\n")
        print("| comparison | max relative error | max norm error | min cosine | bar | |")
        print("|---|---|---|---|---|---|")
        for a in precision["agreement"]:
            bar = a["tolerance"]
            verdict = "" if bar is None else ("ok" if a["passed"] else "**FAIL**")
            print(f"| {a['comparison']} | {a['max_relative_error']:.2e} | {a['max_norm_relative_error']:.2e} | {a['min_cosine']:.7f} | "
                  f"{fmt(bar, '.0e') if bar is not None else 'measured'} | {verdict} |")
        if precision["timing"]:
            print(f"\nbfloat16 against float32 at {precision['speed_size']}x{precision['speed_size']}, batch {precision['speed_batch']} (median ms):\n")
            print("| precision | non-private step | per-patient gradient pass |")
            print("|---|---|---|")
            for t in precision["timing"]:
                print(f"| {t['precision']} | {t['non_private_step_ms']:.1f} | {t['per_patient_gradients_ms']:.1f} |")

    for name in sorted(f for f in os.listdir(out) if f.startswith("quality-") and f.endswith("-report.json")):
        try:
            with open(os.path.join(out, name), encoding="utf-8") as f:
                quality = json.load(f)
        except (OSError, ValueError):
            continue
        step_name = name[: -len("-report.json")]
        wall = steps.get(step_name, {}).get("wall_s")
        print(f"\nEvery epoch of each of {quality['folds']} folds (fold seed {quality['seed']}) on the real BraTS slices, "
              f"{fmt(wall, '.0f')} s of wall time for the command (data loading and scoring included):\n")
        print("| recipe | fold | training s | steps | ε | held-out Dice |")
        print("|---|---|---|---|---|---|")
        for r in quality["recipes"]:
            for f in r["folds"]:
                print(f"| {r['recipe']} | {f['fold']} | {f['train_seconds']:.1f} | {f['steps']} | {fmt(f.get('epsilon'), '.3f')} | {f['dice']:.3f} |")
            print(f"| {r['recipe']} | mean ± std | {r['train_seconds']['mean']:.1f} | | | **{r['dice']['mean']:.3f} ± {r['dice']['std']:.3f}** |")

if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else ".")
