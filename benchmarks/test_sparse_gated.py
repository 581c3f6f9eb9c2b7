"""Inference latency of ``sparse_gated``'s sparse paths against ``nn.Conv2d`` at 25, 50, 75 and 100%
active pixels: the speed-up the spatially sparse convolution is for (Verelst & Tuytelaars 2020).

Forward only, eval mode, ``torch.no_grad``, float32, 64→64 channels, k=3, padding 1. The mask unit reads
a 1-channel guide (weight 1, bias −quantile) so that exactly a fraction f of the pixels is active, with
two kinds of masks:

- ``rand``: pixels on at random (the worst case for locality: every 8×8 tile holds an active pixel);
- ``blob``: a smooth random field thresholded (blobs about a seventh of the image across: what a
  learned mask looks like).

Cases: ``conv`` (``nn.Conv2d``, the baseline), ``dense-masked`` (the operator's dense masked path,
``sparse_inference=False``, at 50%), ``pixels`` / ``tiles`` (the operator forced onto that sparse path),
``auto`` (the default: the cost model picks dense / tiles / pixels), ``block8`` (``block_size=8``: the
mask is block-structured, blob guide; tile path without the mask multiply).

Two sizes: B=8 56×56 and B=1 224×224. ``test_speedup_table`` times every case interleaved (median over
``ADAPTCONV_BENCH_ROUNDS``+2 rounds, so a change of machine load hits all alike) and prints the table
(conv time / case time). The machine is shared: rerun it and read the IQR column before trusting a
difference of a few percent.
"""

from __future__ import annotations

import statistics
import time

import common
import pytest
import torch
import torch.nn.functional as F
from conftest import ROUNDS
from torch import nn

from adaptconv.ops.sparse_gated import SparseGatedConv2d

pytestmark = pytest.mark.benchmark

CONFIGS = {"B8-56px": dict(batch=8, size=56), "B1-224px": dict(batch=1, size=224)}
CHANNELS = 64
FRACTIONS = (0.25, 0.5, 0.75, 1.0)
OPTIONS = {
    "pixels": dict(sparse_path="pixels"),
    "tiles": dict(sparse_path="tiles"),
    "auto": {},
    "block8": dict(block_size=8),
    "dense-masked": dict(sparse_inference=False),
}
CASES = (
    [("conv", None, None), ("dense-masked", "rand", 0.5)]
    + [(impl, kind, f) for kind in ("rand", "blob") for impl in ("pixels", "tiles", "auto") for f in FRACTIONS]
    + [("block8", "blob", f) for f in FRACTIONS]
)


def guide_field(kind: str, batch: int, size: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(2)
    if kind == "rand":
        return torch.randn(batch, 1, size, size, generator=gen)
    return F.interpolate(torch.randn(batch, 1, 7, 7, generator=gen), size=(size, size), mode="bilinear")


def build(impl: str, kind: str | None, fraction: float | None, batch: int, size: int):
    """(step, measured active fraction): ``step()`` runs one inference forward of the case."""
    dev = common.device()
    torch.manual_seed(0)
    conv = nn.Conv2d(CHANNELS, CHANNELS, 3, padding=1).to(dev).eval()
    x = torch.randn(batch, CHANNELS, size, size, generator=torch.Generator().manual_seed(1)).to(dev)
    if impl == "conv":
        module, g = conv, None
    else:
        module = SparseGatedConv2d.build_like(conv, guide_channels=1, **OPTIONS[impl]).to(dev).eval()
        module.copy_conv_weight(conv)
        g = guide_field(kind, batch, size).to(dev)
        # the threshold on the logits the mask decides on (block means for block8) giving the fraction
        logits = F.avg_pool2d(g, 8, 8) if impl == "block8" else g
        thr = -1e4 if fraction >= 1 else float(torch.quantile(logits.flatten().cpu(), 1 - fraction))
        with torch.no_grad():
            module.mask_unit.weight.fill_(1.0)
            module.mask_unit.bias.fill_(-thr)

    def step():
        with torch.no_grad():
            return module(x) if g is None else module(x, g)

    step()
    active = 1.0 if impl == "conv" else module.active_fraction()
    return step, active


def _sync() -> None:
    if common.device().type == "cuda":
        torch.cuda.synchronize()


def _label(impl: str, kind: str | None, fraction: float | None) -> str:
    return impl if fraction is None else f"{impl}-{kind}-{int(fraction * 100)}%"


@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize(
    "impl,kind,fraction",
    [c for c in CASES if c[0] in ("conv", "auto", "block8")],
    ids=[_label(*c) for c in CASES if c[0] in ("conv", "auto", "block8")],
)
def test_latency(benchmark, config, impl, kind, fraction):
    step, active = build(impl, kind, fraction, **CONFIGS[config])
    benchmark.group = f"sparse_gated inference {config}"
    benchmark.extra_info.update(common.environment())
    benchmark.extra_info.update(
        impl=impl,
        mask=kind,
        target_fraction=fraction,
        active_fraction=active,
        channels=CHANNELS,
        kernel=3,
        **CONFIGS[config],
    )
    benchmark.pedantic(lambda: (step(), _sync()), rounds=ROUNDS, iterations=1, warmup_rounds=1)


def test_speedup_table(capsys):
    rounds = ROUNDS + 2
    lines = [
        f"\nsparse_gated inference, 64→64, k=3, float32, {torch.get_num_threads()} threads, "
        f"device {common.device()}, median of {rounds} interleaved rounds",
        "| config | case | active | median ms | IQR% | speed-up vs nn.Conv2d |",
        "|---|---|---:|---:|---:|---:|",
    ]
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
            lines.append(
                f"| {config} | {key} | {steps[key][1]:.2f} | {med * 1e3:.2f} | "
                f"{100 * common.rel_iqr(xs):.0f} | {conv / med:.2f}× |"
            )
        assert all(statistics.median(xs) > 0 for xs in samples.values())
    with capsys.disabled():
        print("\n".join(lines))
