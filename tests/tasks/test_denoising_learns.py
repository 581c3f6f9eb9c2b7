"""Learning regression test: the conv DnCNN denoises — it gains PSNR over its noisy input.

A small, fixed-seed budget (a few seconds on one CPU thread). It fails when learning breaks (the
network then stays at, or falls below, the noisy input it starts from), e.g. with a near-zero learning
rate: ``test_fails_when_learning_is_broken`` checks that this test would notice.
"""

import pytest

from adaptconv.trial import run_trial

NO_MEASURE = {"latency": False, "memory": False, "flops": False}
# σ = 25 on synthetic 32×32 training scenes; test: scikit-image's photographs (64×64 centre crops)
CONFIG = dict(
    task="denoising",
    op="conv",
    seed=0,
    threads=1,
    steps=60,
    batch_size=8,
    measure=NO_MEASURE,
    optimizer={"lr": 3e-3},
    task_options=dict(n_train=128, size=32, width=16, depth=5, test_crop=64),
)
MIN_GAIN_DB = 3.0


def _gain(config):
    rec = run_trial(config)
    assert rec["status"] == "ok", rec.get("error")
    noisy = rec["baselines"]["noisy_input"]
    assert set(noisy) == {"psnr", "ssim"} and "noisy_psnr" not in rec["metrics"]
    return rec["metrics"]["psnr"] - noisy["psnr"], rec


def test_conv_denoiser_gains_psnr_over_the_noisy_input():
    gain, rec = _gain(CONFIG)
    assert gain >= MIN_GAIN_DB, (
        f"conv DnCNN: PSNR {rec['metrics']['psnr']:.2f} dB is only {gain:.2f} dB above "
        f"the noisy input's {rec['baselines']['noisy_input']['psnr']:.2f} dB"
    )
    assert rec["metrics"]["ssim"] > rec["baselines"]["noisy_input"]["ssim"]


def test_fails_when_learning_is_broken():
    """With the learning rate near zero the network stays the identity it starts as: no gain."""
    gain, _ = _gain({**CONFIG, "optimizer": {"lr": 1e-12}})
    assert gain < MIN_GAIN_DB and abs(gain) < 0.1


@pytest.mark.parametrize("sigma", [15.0, 50.0])
def test_noisy_input_baseline_matches_the_noise_level(sigma):
    """The baseline is the noisy test images themselves: PSNR ≈ −20·log10(σ/255) (a little above: the
    noisy values are clipped to [0, 1] like any prediction)."""
    import math

    rec = run_trial({**CONFIG, "steps": 1, "task_options": {**CONFIG["task_options"], "sigma": sigma}})
    assert rec["status"] == "ok", rec.get("error")
    expected = -20 * math.log10(sigma / 255)
    assert expected <= rec["baselines"]["noisy_input"]["psnr"] <= expected + 1.5
