"""PAC's backend contract (adaptconv.ops.pac_contraction.PacBackend): the PyTorch, compiled-CPU and Triton
backends implement it with the same signatures, and backend_for picks the one that runs on the
tensors. Their numerics are compared in test_cpu_pac.py, test_triton_pac.py and test_contractions.py."""

from __future__ import annotations

import inspect

import torch

from adaptconv.ops import config, cpu_pac, torch_pac, triton_pac
from adaptconv.ops.pac_contraction import PacBackend, backend_for, backends

FUNCTIONS = ("usable", "pac_forward", "pac_backward", "distance_forward", "distance_backward")


def _parameters(fn):
    return [p.name for p in inspect.signature(fn).parameters.values()]


def test_every_backend_implements_the_contract_with_the_same_signatures():
    assert backends == (triton_pac, cpu_pac, torch_pac)
    for backend in backends:
        assert isinstance(backend, PacBackend), backend.__name__
        for name in FUNCTIONS:
            want = _parameters(getattr(PacBackend, name))[1:]  # without self
            assert _parameters(getattr(backend, name)) == want, f"{backend.__name__}.{name}"


def test_backend_for_picks_by_device_dtype_and_switch():
    x32, x64, xb = torch.ones(1), torch.ones(1, dtype=torch.float64), torch.ones(1, dtype=torch.bfloat16)
    expected = cpu_pac if cpu_pac.available() else torch_pac
    assert backend_for(x32, x32) is expected and backend_for(x64) is expected
    assert backend_for(xb) is torch_pac
    assert backend_for(x32, x64) is torch_pac  # mixed dtypes: only the PyTorch backend takes them
    with config.override(cpu_kernels=False):
        assert backend_for(x32) is torch_pac
