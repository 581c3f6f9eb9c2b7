"""Inference latency of ``sparse_gated``'s gather/scatter path against ``nn.Conv2d`` at 25, 50, 75 and
100% active pixels: the speed-up the spatially sparse convolution is for (Verelst & Tuytelaars 2020).

Cases (forward only, eval mode, ``torch.no_grad``, float32, 64→64 channels, k=3, padding 1):

- ``conv``: ``nn.Conv2d`` (the dense baseline);
- ``sparse``: the operator forced onto its sparse path (``dense_above=1.0``), self-guided: its mask
  unit reads x, and is set (weight on channel 0, bias Φ⁻¹(f)) so that a fraction f of the pixels,
  scattered at random, is active — the worst case for locality (learned masks are clustered);
- ``auto``: the operator with its default ``dense_above=0.5`` (sparse path at ≤ 50% active, dense
  masked path above);
- ``dense-masked``: the operator's dense masked path (``sparse_inference=False``): the cost of
  "masked FLOPs" without gather/scatter.

Two sizes: the issue's target (B=8, 56×56) and a larger resolution (B=1, 224×224).
``test_speedup_table`` times every case interleaved (median over ``ADAPTCONV_BENCH_ROUNDS``·3 rounds,
so a change of machine load hits all alike) and prints the speed-up table (conv time / case time).
"""

from __future__ import annotations

import statistics
import time

import pytest
import torch
from torch import nn

import common
from conftest import ROUNDS
from adaptconv.ops.sparse_gated import SparseGatedConv2d

pytestmark = pytest.mark.benchmark

CONFIGS = {"B8-56px": dict(batch=8, size=56), "B1-224px": dict(batch=1, size=224)}
CHANNELS = 64
FRACTIONS = (0.25, 0.5, 0.75, 1.0)
CASES = [("conv", None), ("dense-masked", 0.5)] + [(impl, f) for impl in ("sparse", "auto") for f in FRACTIONS]


def build(impl: str, fraction: float | None, batch: int, size: int):
    """(step, measured active fraction): ``step()`` runs one inference forward of the case."""
    dev = common.device()
    torch.manual_seed(0)
    conv = nn.Conv2d(CHANNELS, CHANNELS, 3, padding=1).to(dev).eval()
    x = torch.randn(batch, CHANNELS, size, size, generator=torch.Generator().manual_seed(1)).to(dev)
    if impl == "conv":
        module = conv
    else:
        options = {"sparse": dict(dense_above=1.0), "auto": {}, "dense-masked": dict(sparse_inference=False)}[impl]
        module = SparseGatedConv2d.from_conv(conv, **options).eval()
        with torch.no_grad():
            module.mask_unit.weight.zero_()
            module.mask_unit.weight[0, 0] = 1.0  # logit = x[:, 0] + b: active where x₀ ≥ −b
            bias = 1e4 if fraction >= 1 else torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(fraction)).item()
            module.mask_unit.bias.fill_(bias)

    def step():
        with torch.no_grad():
            return module(x)

    step()
    active = 1.0 if impl == "conv" else module.active_fraction()
    return step, active


def _sync() -> None:
    if common.device().type == "cuda":
        torch.cuda.synchronize()


def _label(impl: str, fraction: float | None) -> str:
    return impl if fraction is None or impl == "dense-masked" else f"{impl}-{int(fraction * 100)}%"


@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("impl,fraction", CASES, ids=[_label(*c) for c in CASES])
def test_latency(benchmark, config, impl, fraction):
    step, active = build(impl, fraction, **CONFIGS[config])
    benchmark.group = f"sparse_gated inference {config}"
    benchmark.extra_info.update(common.environment())
    benchmark.extra_info.update(impl=impl, target_fraction=fraction, active_fraction=active, channels=CHANNELS,
                                kernel=3, **CONFIGS[config])
    benchmark.pedantic(lambda: (step(), _sync()), rounds=ROUNDS, iterations=1, warmup_rounds=1)


def test_speedup_table(capsys):
    rounds = 3 * ROUNDS
    lines = [f"\nsparse_gated inference, 64→64, k=3, float32, {torch.get_num_threads()} threads, "
             f"device {common.device()}, median of {rounds} interleaved rounds",
             "| config | case | active | median ms | IQR% | speed-up vs nn.Conv2d |", "|---|---|---:|---:|---:|---:|"]
    for config, shape in CONFIGS.items():
        steps = {_label(*c): build(*c, **shape) for c in CASES}
        samples: dict[str, list[float]] = {k: [] for k in steps}
        for _ in range(rounds):
            for key, (step, _) in steps.items():
                _sync()
                t0 = time.perf_counter()
                step()
                _sync()
                samples[key].append(time.perf_counter() - t0)
        conv = statistics.median(samples["conv"])
        for key, xs in samples.items():
            med = statistics.median(xs)
            lines.append(f"| {config} | {key} | {steps[key][1]:.2f} | {med * 1e3:.2f} | "
                         f"{100 * common.rel_iqr(xs):.0f} | {conv / med:.2f}× |")
        assert all(statistics.median(xs) > 0 for xs in samples.values())
    with capsys.disabled():
        print("\n".join(lines))
