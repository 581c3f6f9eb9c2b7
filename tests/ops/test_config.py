"""The switches of the pixel-adaptive contractions (adaptconv.ops.config): one context manager that
checks every value first and restores the previous ones, also after an error inside the block."""

from __future__ import annotations

import pytest

from adaptconv.ops import config


def test_override_sets_and_restores():
    before = (config.implementation, config.chunk_elements, config.cpu_kernels)
    with config.override(implementation="unfold", chunk_elements=7, cpu_kernels=not config.cpu_kernels):
        assert (config.implementation, config.chunk_elements) == ("unfold", 7)
        assert config.cpu_kernels is not before[2]
        with config.override(chunk_elements=3):
            assert (config.implementation, config.chunk_elements) == ("unfold", 3)
        assert config.chunk_elements == 7
    assert (config.implementation, config.chunk_elements, config.cpu_kernels) == before
    with pytest.raises(RuntimeError):
        with config.override(implementation="unfold"):
            raise RuntimeError
    assert config.implementation == "lean"


@pytest.mark.parametrize(
    "settings,match",
    [
        (dict(implementation="fast"), "implementation"),
        (dict(chunk_elements=0), "chunk_elements"),
        (dict(chunk_elements=2.5), "chunk_elements"),
        (dict(cpu_kernels="no"), "cpu_kernels"),
        (dict(chunk=4), "unknown setting 'chunk'"),
        (dict(chunk_elements=8, implementation="fast"), "implementation"),
    ],
)
def test_override_refuses_bad_settings_and_changes_nothing(settings, match):
    before = (config.implementation, config.chunk_elements, config.cpu_kernels)
    with pytest.raises(ValueError, match=match):
        with config.override(**settings):
            pass
    assert (config.implementation, config.chunk_elements, config.cpu_kernels) == before
