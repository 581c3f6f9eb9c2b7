"""Spatially adaptive execution against the dense network: executed FLOPs, latency and peak memory of
a ResNet-18 segmentation network (timm resnet18, stride-4..32 maps, block-wise head of width 32,
6 classes) at 512×512, batch 1, float32, inference, with 25/50/75/100% of the blocks selected:

- ``dense``: the plain network (``BlockSegmenter.forward``), PyTorch's default (NCHW) layout;
- ``dense-channels-last``: the same in channels-last memory format (weights and input), the layout
  the SegBlocks executor computes in — a reference, not the baseline of the speed-up column;
- ``segblocks``: dual resolution, 128-px blocks (16 per image), the given fraction at high resolution
  and the rest at half resolution (``DualResSegmenter`` with a fixed mask: the policy network, a few
  kFLOPs, is left out; the gathers BlockPad needs are built anew in every forward, as for a new
  selection);
- ``blockcopy``: one video frame after the first, 128-px blocks (16 per image; 64-px blocks leave
  2×2-px blocks at stride 32, where the halo costs more than it saves: 1.4× instead of 2.2× at 25%), the given fraction
  recomputed and the rest copied from the feature cache (``BlockCopy.step`` with a fixed selection).

Selections are random blocks (seeded). Latency: the cases interleaved round by round (median of
``ADAPTCONV_BENCH_ROUNDS`` + 2 rounds, so machine load hits all alike), ``adaptconv.measure.summarize``
for the statistics; peak memory: ``adaptconv.measure.measure_peak_memory``; FLOPs:
``adaptconv.measure.count_flops`` (everything the dispatcher sees). ``test_spatial_speedup_table``
prints the table of benchmarks/RESULTS-spatial.md.
"""

from __future__ import annotations

import copy
import os
import time

import common
import pytest
import torch
from conftest import ROUNDS
from torch import nn

from adaptconv.measure import count_flops, measure_peak_memory, summarize
from adaptconv.spatial import BlockCopy, BlockSegmenter, DualResSegmenter

pytestmark = pytest.mark.benchmark

SIZE = 512
FRACTIONS = (0.25, 0.5, 0.75, 1.0)
SEG_BLOCK, COPY_BLOCK = 128, 128


def _network() -> BlockSegmenter:
    import timm

    torch.manual_seed(0)
    backbone = timm.create_model("resnet18", features_only=True, out_indices=(1, 2, 3, 4), pretrained=False)
    return BlockSegmenter(backbone, backbone.feature_info.channels(), 6, width=32).eval()


def _mask(fraction: float, grid: int, seed: int) -> torch.Tensor:
    n = grid * grid
    mask = torch.zeros(n, dtype=torch.bool)
    mask[torch.randperm(n, generator=torch.Generator().manual_seed(seed))[: round(fraction * n)]] = True
    return mask.view(1, grid, grid)


class _CopyStep(nn.Module):
    """One BlockCopy frame with a fixed selection, after a primed first frame (for count_flops)."""

    def __init__(self, bc: BlockCopy, select: torch.Tensor) -> None:
        super().__init__()
        self.bc, self.select = bc, select

    def forward(self, frame: torch.Tensor) -> torch.Tensor:
        return self.bc.step(frame, select=self.select)


def build_cases():
    dev = common.device()
    net = _network().to(dev)
    frames = torch.rand(2, 1, 3, SIZE, SIZE, device=dev)
    # the dense network in channels-last memory format (the layout the SegBlocks executor works in
    # internally): a reference for how much of a speed-up the layout alone gives
    net_cl = copy.deepcopy(net).to(memory_format=torch.channels_last)
    cases = {
        "dense": (net, (frames[1],)),
        "dense-channels-last": (net_cl, (frames[1].contiguous(memory_format=torch.channels_last),)),
    }
    for f in FRACTIONS:
        seg = DualResSegmenter(net, block_size=SEG_BLOCK, policy="all").eval()
        cases[f"segblocks {f:.0%}"] = (seg, (frames[1], _mask(f, SIZE // SEG_BLOCK, 1).to(dev)))
        bc = BlockCopy(net, block_size=COPY_BLOCK, policy="all", online=False).eval()
        with torch.no_grad():
            bc.step(frames[0])  # the first frame fills the cache
        cases[f"blockcopy {f:.0%}"] = (_CopyStep(bc, _mask(f, SIZE // COPY_BLOCK, 2).to(dev)), (frames[1],))
    return cases


def _call(model, inputs):
    def step():
        with torch.no_grad():
            return model(*inputs)

    return step


def _sync():
    if torch.cuda.is_available() and common.device().type == "cuda":
        torch.cuda.synchronize()


def test_spatial_speedup_table(capsys):
    cases = build_cases()
    dev = common.device()
    flops = {name: count_flops(model, inputs).flops for name, (model, inputs) in cases.items()}
    memory = {
        name: measure_peak_memory(_call(model, inputs), dev).peak_bytes for name, (model, inputs) in cases.items()
    }
    load_before = os.getloadavg()
    samples: dict[str, list[float]] = {name: [] for name in cases}
    steps = {name: _call(model, inputs) for name, (model, inputs) in cases.items()}
    for step in steps.values():  # one untimed call each
        step()
    for _ in range(ROUNDS + 2):
        for name, step in steps.items():
            _sync()
            t0 = time.perf_counter()
            step()
            _sync()
            samples[name].append(time.perf_counter() - t0)
    load_after = os.getloadavg()
    stats = {name: summarize(s) for name, s in samples.items()}
    med = {name: s.median for name, s in stats.items()}
    env = common.environment()
    lines = [
        f"ResNet-18 segmentation network, {SIZE}×{SIZE}, batch 1, float32, inference; {env['threads']} "
        f"thread(s), {env['device']}; median of {ROUNDS + 2} interleaved rounds; load average (1 min) "
        f"{load_before[0]:.2f} before the timed rounds, {load_after[0]:.2f} after (other processes share the machine)",
        "",
        "| case | selected blocks | GFLOPs | FLOPs vs dense | latency (ms, median [IQR]) | speed-up vs dense | peak memory (MiB) | memory vs dense |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in cases:
        s = stats[name]
        sel = "—" if name.startswith("dense") else name.split()[1]
        lines.append(
            f"| {name.split()[0]} | {sel} | {flops[name] / 1e9:.2f} | {flops[name] / flops['dense']:.2f} | "
            f"{1e3 * s.median:.0f} [{1e3 * s.q1:.0f}–{1e3 * s.q3:.0f}] | {med['dense'] / s.median:.2f}× | "
            f"{memory[name] / 2**20:.0f} | {memory[name] / memory['dense']:.2f} |"
        )
    with capsys.disabled():
        print("\n" + "\n".join(lines))
    # executed FLOPs fall with the fraction for both methods
    for method in ("segblocks", "blockcopy"):
        series = [flops[f"{method} {f:.0%}"] for f in FRACTIONS]
        assert series == sorted(series) and series[0] < 0.5 * flops["dense"]
    # the speed targets (BlockCopy ≥ 2×, SegBlocks ≥ 1.5× at 25%) are read from the table, not asserted:
    # on a shared machine a latency assertion fails on load, not on the code
