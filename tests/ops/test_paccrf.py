"""PAC-CRF: explicit-loop mean field, zero compatibility, constant guide, gradients, kind and errors."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from adaptconv import OpRegistryError, create_op, get_op
from adaptconv.models.swap import SwapError, swap_convs
from adaptconv.ops.conformance import gradcheck_operator
from adaptconv.ops.paccrf import PacCRF

D = torch.float64


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _op(labels=3, **kwargs) -> PacCRF:
    """A float64 CRF with non-trivial scales and a compatibility matrix that is not Potts."""
    op = PacCRF(labels, **kwargs).double()
    with torch.no_grad():
        op.compat.add_(torch.randn(labels, labels, dtype=D, generator=_gen(7)) * 0.5)
    return op


def reference_step(logits, unary, image, op: PacCRF):
    """One mean-field step written out pixel by pixel and tap by tap (float64)."""
    b, labels, h, w = unary.shape
    k, d, r = op.kernel_size, op.dilation, op.kernel_size // 2
    sp, sc = op.log_pos_scale.exp().item(), op.log_color_scale.exp().item()
    q = torch.softmax(logits, 1)
    message = torch.zeros_like(unary)
    for bi in range(b):
        for i in range(h):
            for j in range(w):
                weights, neighbours = [], []
                for a in range(k):
                    for c in range(k):
                        if a == r and c == r:
                            continue  # no message from the pixel to itself
                        y, x = i + (a - r) * d, j + (c - r) * d
                        if not (0 <= y < h and 0 <= x < w):
                            continue
                        pos = ((y - i) ** 2 + (x - j) ** 2) / sp**2
                        col = (image[bi, :, y, x] - image[bi, :, i, j]).pow(2).sum().item() / sc**2
                        weights.append(math.exp(-0.5 * (pos + col)))
                        neighbours.append(q[bi, :, y, x])
                total = sum(weights)
                for wt, nq in zip(weights, neighbours):
                    message[bi, :, i, j] += (wt / total if op.normalize_kernel and total > 0 else wt) * nq
    return unary + torch.einsum("lm,bmhw->blhw", op.compat.detach(), message)


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("k,d", [(3, 1), (5, 2)])
def test_one_iteration_matches_explicit_loop(normalize, k, d):
    op = _op(3, num_iters=1, kernel_size=k, dilation=d, pos_scale=1.7, color_scale=0.4, normalize_kernel=normalize)
    unary = torch.randn(2, 3, 5, 6, dtype=D, generator=_gen(1)) * 2
    image = torch.rand(2, 3, 5, 6, dtype=D, generator=_gen(2))
    with torch.no_grad():
        y = op(unary, image)
    torch.testing.assert_close(y, reference_step(unary, unary, image, op), atol=1e-12, rtol=0)
    assert (y - unary).abs().max() > 0.1  # the messages really change the logits


def test_iterations_restart_from_the_unaries():
    """Each step is unary + C·message(Q of the previous step), not an accumulation."""
    op = _op(2, num_iters=3, kernel_size=3, color_scale=0.5)
    unary = torch.randn(1, 2, 4, 5, dtype=D, generator=_gen(3))
    image = torch.rand(1, 3, 4, 5, dtype=D, generator=_gen(4))
    ref = unary
    for _ in range(3):
        ref = reference_step(ref, unary, image, op)
    with torch.no_grad():
        torch.testing.assert_close(op(unary, image), ref, atol=1e-12, rtol=0)


@pytest.mark.parametrize("normalize", [False, True])
def test_zero_compatibility_returns_the_unaries(normalize):
    op = PacCRF(4, num_iters=4, normalize_kernel=normalize).double()
    with torch.no_grad():
        op.compat.zero_()
    unary = torch.randn(2, 4, 6, 7, dtype=D, generator=_gen(5))
    image = torch.rand(2, 3, 6, 7, dtype=D, generator=_gen(6))
    with torch.no_grad():
        assert torch.equal(op(unary, image), unary)
    assert PacCRF(4, num_iters=0).double()(unary, image).equal(unary)


@pytest.mark.parametrize("normalize", [False, True])
def test_constant_guide_gives_a_spatial_gaussian_smoothing_message(normalize):
    k, d, labels = 5, 2, 3
    op = _op(labels, num_iters=1, kernel_size=k, dilation=d, pos_scale=2.0, normalize_kernel=normalize)
    unary = torch.randn(2, labels, 7, 9, dtype=D, generator=_gen(8))
    image = torch.full((2, 3, 7, 9), 0.7, dtype=D)
    sigma = op.log_pos_scale.exp().item()
    off = torch.arange(-(k // 2), k // 2 + 1, dtype=D) * d
    g = torch.exp(-0.5 * (off[:, None] ** 2 + off[None, :] ** 2) / sigma**2)
    g[k // 2, k // 2] = 0
    smooth = F.conv2d(
        torch.softmax(unary, 1), g.expand(labels, 1, k, k), padding=d * (k // 2), dilation=d, groups=labels
    )
    if normalize:
        smooth = smooth / F.conv2d(
            torch.ones(1, 1, 7, 9, dtype=D), g.view(1, 1, k, k), padding=d * (k // 2), dilation=d
        )
    with torch.no_grad():
        torch.testing.assert_close(
            op(unary, image), unary + torch.einsum("lm,bmhw->blhw", op.compat, smooth), atol=1e-12, rtol=0
        )


def test_compatibility_starts_as_potts():
    op = PacCRF(3, compat_weight=0.5)
    torch.testing.assert_close(op.compat.detach(), -0.5 * (1 - torch.eye(3)))


def test_module_identity_check_passes():
    assert "unaries unchanged" in PacCRF.identity_check()


@pytest.mark.parametrize("normalize", [False, True])
def test_gradcheck_input_guide_and_every_parameter(normalize):
    op = _op(2, num_iters=2, kernel_size=3, color_scale=0.5, normalize_kernel=normalize)
    assert {n for n, _ in op.named_parameters()} == {"log_pos_scale", "log_color_scale", "compat"}
    unary = torch.randn(1, 2, 4, 4, dtype=D, generator=_gen(9))
    image = torch.rand(1, 3, 4, 4, dtype=D, generator=_gen(10))
    assert gradcheck_operator(op, unary, image, fast_mode=False)


def test_fixed_scales_are_buffers():
    op = PacCRF(3, learn_scales=False)
    assert {n for n, _ in op.named_parameters()} == {"compat"}
    assert {"log_pos_scale", "log_color_scale"} <= set(op.state_dict())


def test_kind_metadata_and_refusals():
    cls = get_op("paccrf")
    assert cls is PacCRF and cls.kind == "refiner" and cls.guide == "required"
    with pytest.raises(OpRegistryError, match="kind 'refiner', not a convolution"):
        create_op("paccrf", 4, 4, 3)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1))
    with pytest.raises(SwapError, match=r"'paccrf' is of kind 'refiner', not a convolution"):
        swap_convs(model, "paccrf", guide="image")


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(kernel_size=4), "kernel_size must be odd"),
        (dict(num_iters=-1), "num_iters"),
        (dict(dilation=0), "dilation"),
        (dict(pos_scale=0), "pos_scale"),
        (dict(color_scale=-1.0), "color_scale"),
        (dict(guide_channels=None), "needs a guide"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PacCRF(3, **kwargs)


def test_guide_errors():
    op = PacCRF(3)
    x = torch.randn(1, 3, 6, 6)
    with pytest.raises(ValueError, match="needs a guide"):
        op(x)
    with pytest.raises(ValueError, match=r"guide shape \(1, 3, 5, 6\) does not match"):
        op(x, torch.rand(1, 3, 5, 6))


# --------------------------------------------------------------------------------------------------
# check-op runs the refiner checks, and they can fail


class _IgnoresGuide(PacCRF):
    paper = "broken on purpose"

    def adaptive_forward(self, x, guide):
        return super().adaptive_forward(x, torch.zeros_like(guide))


class _ChangesShape(PacCRF):
    paper = "broken on purpose"

    def adaptive_forward(self, x, guide):
        return super().adaptive_forward(x, guide)[:, :, :-1]


class _ReturnsProbabilities(PacCRF):
    paper = "broken on purpose"

    def adaptive_forward(self, x, guide):
        return torch.softmax(super().adaptive_forward(x, guide), 1)


def test_check_op_runs_the_refiner_checks():
    from adaptconv.ops.conformance import run_checks

    results = {r.name: r for r in run_checks("paccrf")}
    assert all(r.status == "pass" for r in results.values()), results
    assert "guide" in results and "identity" in results


@pytest.mark.parametrize(
    "cls,check",
    [
        (_IgnoresGuide, "guide"),
        (_ChangesShape, "output shapes"),
        (_ReturnsProbabilities, "identity"),
    ],
)
def test_refiner_checks_catch_broken_operators(cls, check):
    from adaptconv.ops.conformance import run_checks

    cls.name = cls.__name__
    results = {r.name: r for r in run_checks(cls, only=[check])}
    assert results[check].status == "fail", results[check]
