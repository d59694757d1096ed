#!/usr/bin/env python3
"""PyTorch baseline for the non-private training step of DpBenchmark (TorchSharp).

Builds the same U-Net as the C# ``UNet2d`` with the reference ``UNetConfig`` (1 -> 1 channels,
widths 8-16-32-64-128-256, GroupNorm(1, C), leaky ReLU 0.1, bilinear x2 up-sampling with
align_corners=False; 2,164,145 parameters) under the same module names, so a state_dict would
match the C# layout name for name. It times the step ``DpBenchmark`` calls PlainStep:

    zero_grad; BceDice per-sample loss on the logits, mean over the batch; backward; SGD step
    (lr 1e-3, momentum 0.9) on fixed inputs randn[B, 1, S, S] and targets rand[B, 1, S, S] > 0.5.

Only the speed is meant to be compared: the seed (20240611) matches the C# option's value, but the
generators and the order of draws differ, so weights and data are not the same numbers.

Known differences from the C# benchmark that this script does not imitate:
  * DpBenchmark alternates its non-private step with a DP step (and holds a second model); here
    only the non-private step runs, so the peak memory numbers are not comparable.
  * TorchSharp's zero_grad fills the gradients with zeros in place, and its SGD is a per-parameter
    loop; PyTorch's defaults are set_to_none=True and (on CUDA) the foreach SGD kernels. The
    --zero-grad and --sgd-foreach flags select either behaviour; the defaults are PyTorch's.

Usage:
    python3 bench/gpu/torch_reference.py --size 240 --batch 8 32 64 --iterations 20 --warmup 3
    python3 bench/gpu/torch_reference.py --selftest     # CPU only, a few seconds

stdout: one JSON object per batch size; stderr: human-readable progress.
Exit status: 0 ok, 1 a check failed (layout, parameter count, non-finite loss), 2 bad arguments.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import math
import statistics
import sys
import time
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

SEED = 20240611
REFERENCE_PARAMETERS = 2_164_145


class CheckFailed(Exception):
    """A consistency check failed; the script exits with status 1."""


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------
# Model: the reference configuration of libs/MriSeg.Learning/Model/UNetConfig.cs
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class UNetConfig:
    in_channels: int = 1
    out_channels: int = 1
    depth: int = 4
    base_width: int = 8
    group_norm_groups: int = 1
    group_norm_eps: float = 1e-5
    negative_slope: float = 0.1


def expected_layout(cfg: UNetConfig) -> list[tuple[str, str, int, int]]:
    """(module name, "conv" | "norm", in, out) in the order of the C# UNetLayout.

    Written independently of the module classes below so that a mistake in either shows up as a
    mismatch in check_model rather than silently agreeing with itself.
    """
    w = cfg.base_width
    layers: list[tuple[str, str, int, int]] = []

    def block(prefix: str, cin: int, cout: int) -> None:
        layers.append((f"{prefix}.conv.0", "conv", cin, cout))
        layers.append((f"{prefix}.conv.1", "norm", cout, cout))
        layers.append((f"{prefix}.conv.3", "conv", cout, cout))
        layers.append((f"{prefix}.conv.4", "norm", cout, cout))

    layers.append(("in_conv", "conv", cfg.in_channels, w))
    for level in range(cfg.depth):
        block(f"down_convs.{level}", w << level, w << (level + 1))
    for level in range(cfg.depth):
        layers.append((f"up_samples.{level}.conv.0", "conv", w << (level + 2), w << (level + 1)))
        layers.append((f"up_samples.{level}.conv.1", "norm", w << (level + 1), w << (level + 1)))
    for level in range(cfg.depth):
        block(f"up_convs.{level}", w << (level + 2), w << (level + 1))
    block("bottleneck_conv", w << cfg.depth, w << (cfg.depth + 1))
    layers.append(("out_conv.0", "conv", 2 * w, w))
    layers.append(("out_conv.2", "conv", w, cfg.out_channels))
    return layers


def _conv3x3(cin: int, cout: int) -> nn.Conv2d:
    # PyTorch's default init, U(+-1/sqrt(fan_in)) for weight and bias, is what UNet2d reproduces.
    return nn.Conv2d(cin, cout, kernel_size=3, stride=1, padding=1, bias=True)


def _norm(cfg: UNetConfig, channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(cfg.group_norm_groups, channels, eps=cfg.group_norm_eps, affine=True)


def _act(cfg: UNetConfig) -> nn.LeakyReLU:
    # Not in place: the C# forward allocates a new tensor for every activation too.
    return nn.LeakyReLU(cfg.negative_slope)


class ConvBlock(nn.Module):
    """conv, GN, act, conv, GN, act in a Sequential named ``conv`` (indices 2 and 5 parameter-free)."""

    def __init__(self, cfg: UNetConfig, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            _conv3x3(cin, cout), _norm(cfg, cout), _act(cfg),
            _conv3x3(cout, cout), _norm(cfg, cout), _act(cfg),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class UpSample(nn.Module):
    """Bilinear x2, then conv, GN, act; the resize is outside ``conv`` so the indices stay 0, 1."""

    def __init__(self, cfg: UNetConfig, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(_conv3x3(cin, cout), _norm(cfg, cout), _act(cfg))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # An explicit output size, as the C# code passes, rather than scale_factor.
        size = (x.shape[2] * 2, x.shape[3] * 2)
        return self.conv(F.interpolate(x, size=size, mode="bilinear", align_corners=False))


class UNet2d(nn.Module):
    def __init__(self, cfg: UNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        w = cfg.base_width
        # Registration order is the C# layout order, so state_dict() lists the same names in the
        # same order as UNetLayout.ParameterNames.
        self.in_conv = _conv3x3(cfg.in_channels, w)
        self.down_convs = nn.ModuleList(
            ConvBlock(cfg, w << level, w << (level + 1)) for level in range(cfg.depth))
        self.up_samples = nn.ModuleList(
            UpSample(cfg, w << (level + 2), w << (level + 1)) for level in range(cfg.depth))
        self.up_convs = nn.ModuleList(
            ConvBlock(cfg, w << (level + 2), w << (level + 1)) for level in range(cfg.depth))
        self.bottleneck_conv = ConvBlock(cfg, w << cfg.depth, w << (cfg.depth + 1))
        self.out_conv = nn.Sequential(_conv3x3(2 * w, w), _act(cfg), _conv3x3(w, cfg.out_channels))

    def forward_logits(self, x: torch.Tensor) -> torch.Tensor:
        # in_conv has no norm or activation after it (as in UNet2d.Run).
        x = self.in_conv(x)
        skips = []
        for down in self.down_convs:
            x = down(x)
            skips.append(x)
            x = F.max_pool2d(x, kernel_size=2, stride=2)
        x = self.bottleneck_conv(x)
        for level in reversed(range(self.cfg.depth)):
            up = self.up_samples[level](x)
            # Skip first, then the up-sampled path.
            x = self.up_convs[level](torch.cat([skips[level], up], dim=1))
        return self.out_conv(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.forward_logits(x))


def check_model(model: UNet2d, expect_reference: bool) -> int:
    """Names, order and shapes against expected_layout; returns the parameter count."""
    expected = []
    for name, kind, cin, cout in expected_layout(model.cfg):
        weight_shape = (cout, cin, 3, 3) if kind == "conv" else (cout,)
        expected.append((name + ".weight", weight_shape))
        expected.append((name + ".bias", (cout,)))
    actual = [(name, tuple(p.shape)) for name, p in model.named_parameters()]
    if actual != expected:
        for i, (a, e) in enumerate(zip(actual, expected)):
            if a != e:
                raise CheckFailed(f"parameter {i}: model has {a}, the C# layout has {e}")
        raise CheckFailed(f"the model has {len(actual)} parameter tensors, the C# layout {len(expected)}")
    if list(model.state_dict().keys()) != [name for name, _ in expected]:
        raise CheckFailed("state_dict keys differ from the parameter names (unexpected buffers?)")

    count = sum(p.numel() for p in model.parameters())
    if expect_reference and count != REFERENCE_PARAMETERS:
        raise CheckFailed(f"parameter count {count:,} != {REFERENCE_PARAMETERS:,} of the reference U-Net")
    return count


# ----------------------------------------------------------------------------------------------
# Loss: SegmentationLosses.BceDice() of libs/MriSeg.Learning/Model/SegmentationLosses.cs
# ----------------------------------------------------------------------------------------------


def bce_dice_per_sample(logits: torch.Tensor, targets: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """[N, C, H, W] logits and targets -> [N]: BCE mean over C, H, W plus 1 - soft Dice mean over C."""
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none").mean(dim=(1, 2, 3))
    p = torch.sigmoid(logits)
    intersection = (p * targets).sum(dim=(2, 3))
    denominator = p.sum(dim=(2, 3)) + targets.sum(dim=(2, 3))
    dice = (2 * intersection + smooth) / (denominator + smooth)
    return bce + (1 - dice.mean(dim=1))


# ----------------------------------------------------------------------------------------------
# Benchmark
# ----------------------------------------------------------------------------------------------


def _quiet(getter):
    # The allow_tf32 getters warn about the fp32_precision API (and may raise when the two
    # disagree); the script only reports them.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return getter()
        except Exception:  # noqa: BLE001 - absent attribute or refused read: report null
            return None


def backend_settings() -> dict:
    return {
        "cudnn_tf32": _quiet(lambda: bool(torch.backends.cudnn.allow_tf32)),
        "matmul_tf32": _quiet(lambda: bool(torch.backends.cuda.matmul.allow_tf32)),
        "cudnn_conv_fp32_precision": _quiet(lambda: str(torch.backends.cudnn.conv.fp32_precision)),
        "matmul_fp32_precision": _quiet(lambda: str(torch.backends.cuda.matmul.fp32_precision)),
        "float32_matmul_precision": _quiet(torch.get_float32_matmul_precision),
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
        "cudnn_deterministic": bool(torch.backends.cudnn.deterministic),
    }


def _finite_or_none(value: float):
    return value if math.isfinite(value) else None


def run_batch(cfg: UNetConfig, size: int, batch: int, device: torch.device, iterations: int,
              warmup: int, channels_last: bool, set_to_none: bool, foreach, expect_reference: bool) -> dict:
    is_cuda = device.type == "cuda"
    gc.collect()
    if is_cuda:
        # Return the previous batch's cached blocks so the peak reserved memory is this batch's own.
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)

    # A fresh model per batch, as DpBenchmark.Run builds one per call; initialised on the CPU so
    # the weights do not depend on the device.
    torch.manual_seed(SEED)
    model = UNet2d(cfg)
    parameters = check_model(model, expect_reference)
    model = model.to(device)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    model.train()

    inputs = torch.randn(batch, cfg.in_channels, size, size, device=device)
    targets = (torch.rand(batch, cfg.out_channels, size, size, device=device) > 0.5).to(inputs.dtype)
    inputs = inputs.contiguous(memory_format=memory_format)

    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, foreach=foreach)

    def step() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=set_to_none)
        loss = bce_dice_per_sample(model.forward_logits(inputs), targets).mean()
        loss.backward()
        optimizer.step()
        return loss.detach()

    def sync() -> None:
        if is_cuda:
            torch.cuda.synchronize(device)

    losses = []
    for _ in range(warmup):
        losses.append(step())

    step_ms = []
    for _ in range(iterations):
        sync()
        start = time.perf_counter()
        loss = step()
        sync()
        step_ms.append((time.perf_counter() - start) * 1000.0)
        losses.append(loss)

    # Read the losses only now: .item() inside the loop would add a sync the C# step does not have.
    loss_first = float(losses[0].item())
    loss_last = float(losses[-1].item())
    median_ms = statistics.median(step_ms)
    result = {
        "kind": "torch_nonprivate",
        "size": size,
        "batch": batch,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if is_cuda else "cpu",
        "samples_per_second": batch / (median_ms / 1000.0),
        "median_step_ms": median_ms,
        "step_ms": [round(ms, 4) for ms in step_ms],
        "warmup": warmup,
        "iterations": iterations,
        "peak_allocated_mib": torch.cuda.max_memory_allocated(device) / 2**20 if is_cuda else None,
        "peak_reserved_mib": torch.cuda.max_memory_reserved(device) / 2**20 if is_cuda else None,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if is_cuda else None,
        "threads": torch.get_num_threads(),
        "parameters": parameters,
        "seed": SEED,
        "channels_last": channels_last,
        "zero_grad_set_to_none": set_to_none,
        "sgd_foreach": foreach,
        "loss_first": _finite_or_none(loss_first),
        "loss_last": _finite_or_none(loss_last),
    }
    result.update(backend_settings())
    if not (math.isfinite(loss_first) and math.isfinite(loss_last)):
        raise CheckFailed(f"batch {batch}: non-finite loss (first {loss_first}, last {loss_last})")
    return result


def selftest() -> None:
    """CPU-only logic check: layout, count, loss formula, one short benchmark run."""
    cfg = UNetConfig()
    torch.manual_seed(SEED)
    model = UNet2d(cfg)
    count = check_model(model, expect_reference=True)
    log(f"selftest: layout matches the C# UNetLayout, {count:,} parameters")

    with torch.no_grad():
        logits = model.forward_logits(torch.randn(2, 1, 32, 32))
    if tuple(logits.shape) != (2, 1, 32, 32):
        raise CheckFailed(f"logits shape {tuple(logits.shape)}, expected (2, 1, 32, 32)")

    # Zero logits, empty 2x2 target: BCE = ln 2; Dice = (0 + 1) / (4 * 0.5 + 0 + 1) = 1/3.
    value = bce_dice_per_sample(torch.zeros(3, 1, 2, 2), torch.zeros(3, 1, 2, 2))
    expected = math.log(2.0) + 2.0 / 3.0
    if tuple(value.shape) != (3,) or not torch.allclose(value, torch.full((3,), expected), atol=1e-6):
        raise CheckFailed(f"BceDice of a known case: {value.tolist()}, expected 3 x {expected}")
    log("selftest: BceDice per-sample loss matches the hand-computed case")

    result = run_batch(cfg, size=32, batch=2, device=torch.device("cpu"), iterations=2, warmup=1,
                       channels_last=False, set_to_none=True, foreach=None, expect_reference=True)
    result["selftest"] = True
    print(json.dumps(result), flush=True)
    log(f"selftest: ok (loss {result['loss_first']:.4f} -> {result['loss_last']:.4f})")


def _parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=240, help="image height and width (multiple of 16)")
    parser.add_argument("--batch", type=int, nargs="+", default=[8, 32, 64], help="batch sizes to time")
    parser.add_argument("--iterations", type=int, default=20, help="timed steps per batch size")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per batch size")
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (default cuda)")
    parser.add_argument("--channels-last", choices=["yes", "no"], default="no",
                        help="model and inputs in channels_last memory format (default no)")
    parser.add_argument("--cudnn-benchmark", action="store_true",
                        help="set torch.backends.cudnn.benchmark (off by default, as in TorchSharp)")
    parser.add_argument("--zero-grad", choices=["none", "zeros"], default="none",
                        help="none: PyTorch's default set_to_none=True; zeros: fill in place as TorchSharp does")
    parser.add_argument("--sgd-foreach", choices=["default", "yes", "no"], default="default",
                        help="SGD implementation: PyTorch's choice, the foreach kernels, or a per-parameter loop")
    parser.add_argument("--selftest", action="store_true", help="quick CPU-only logic check, then exit")
    args = parser.parse_args(argv)

    if args.size <= 0 or args.size % (1 << UNetConfig().depth) != 0:
        parser.error(f"--size must be a positive multiple of {1 << UNetConfig().depth}, got {args.size}")
    if any(b < 1 for b in args.batch):
        parser.error("--batch values must be at least 1")
    if args.iterations < 1:
        parser.error("--iterations must be at least 1")
    if args.warmup < 0:
        parser.error("--warmup must not be negative")
    try:
        args.device = torch.device(args.device)
    except (RuntimeError, ValueError) as error:
        parser.error(f"--device: {error}")
    if args.device.type == "cuda" and not args.selftest and not torch.cuda.is_available():
        parser.error("--device is CUDA but torch.cuda.is_available() is false (use --device cpu)")
    return args


def main(argv=None) -> int:
    args = _parse_args(argv)
    if args.cudnn_benchmark:
        torch.backends.cudnn.benchmark = True
    # TF32 and everything else stay at PyTorch's defaults; they are only reported.

    try:
        if args.selftest:
            selftest()
            return 0

        device = args.device
        settings = backend_settings()
        log(f"torch {torch.__version__}, CUDA {torch.version.cuda}, "
            f"cuDNN {torch.backends.cudnn.version() if device.type == 'cuda' else '-'}, "
            f"device {device}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
            + f", {torch.get_num_threads()} CPU threads")
        log("backend settings: " + ", ".join(f"{k}={v}" for k, v in settings.items()))

        foreach = {"default": None, "yes": True, "no": False}[args.sgd_foreach]
        for batch in args.batch:
            result = run_batch(UNetConfig(), args.size, batch, device, args.iterations, args.warmup,
                               channels_last=args.channels_last == "yes",
                               set_to_none=args.zero_grad == "none", foreach=foreach,
                               expect_reference=True)
            print(json.dumps(result), flush=True)
            memory = (f", peak {result['peak_allocated_mib']:.0f} MiB allocated / "
                      f"{result['peak_reserved_mib']:.0f} MiB reserved") if result["peak_allocated_mib"] is not None else ""
            log(f"{args.size}x{args.size} batch {batch}: {result['samples_per_second']:.2f} samples/s, "
                f"median {result['median_step_ms']:.2f} ms over {args.iterations} steps "
                f"(min {min(result['step_ms']):.2f}, max {max(result['step_ms']):.2f}){memory}, "
                f"{result['parameters']:,} parameters")
    except CheckFailed as failure:
        log(f"CHECK FAILED: {failure}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
