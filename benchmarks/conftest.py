"""pytest-benchmark set-up: every test here is marked ``benchmark`` (kept out of the default run, whose
``-m 'not slow and not benchmark'`` comes from pyproject), the thread count is set once and recorded.

Run with ``make bench`` (``pytest -q -m benchmark benchmarks``). Environment variables:
``ADAPTCONV_BENCH_THREADS`` (default: every core), ``ADAPTCONV_BENCH_DEVICE`` (default: cuda if
available), ``ADAPTCONV_BENCH_ROUNDS`` (timed rounds per case, default 5).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import common  # noqa: E402

THREADS = common.set_threads()
ROUNDS = int(os.environ.get("ADAPTCONV_BENCH_ROUNDS", 5))


def pytest_collection_modifyitems(config, items):
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.fspath).parents:
            item.add_marker(pytest.mark.benchmark)


def pytest_report_header(config):
    env = common.environment()
    return f"adaptconv benchmarks: torch {env['torch']}, {env['threads']} threads, device {env['device']}"


@pytest.fixture
def record(benchmark):
    """Fill ``benchmark.extra_info`` with the case, the environment and the peak memory."""

    def _record(case: common.Case, peak_bytes: int):
        benchmark.group = f"{case.phase} B{case.batch} {case.size}px"
        benchmark.extra_info.update(common.environment())
        benchmark.extra_info.update(
            op=case.op,
            impl=case.impl,
            phase=case.phase,
            batch=case.batch,
            channels=case.channels,
            size=case.size,
            kernel=case.kernel,
            peak_bytes=peak_bytes,
            peak_mib=round(peak_bytes / 2**20, 2),
        )

    return _record
