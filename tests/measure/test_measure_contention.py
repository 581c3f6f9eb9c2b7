"""The host checks around a latency: other processes' CPU use, the calibration and the ``contended`` verdict."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import torch

from adaptconv.measure import contention, measure_latency
from adaptconv.measure.contention import Calibration, LoadWindow, crowded, host_load

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/stat")


def _hogs(n: int) -> list[subprocess.Popen]:
    """``n`` processes that keep one core busy each until killed."""
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def _stop(procs) -> None:
    for p in procs:
        p.kill()
        p.wait()


@linux
def test_monitor_sees_other_processes_cpu_time():
    procs = _hogs(contention.usable_cpus())
    try:
        time.sleep(0.3)  # let them start
        mon = contention.LoadMonitor().start()
        time.sleep(0.6)
        window = mon.stop()
    finally:
        _stop(procs)
    # the hogs kept (nearly) every core busy; this process only slept
    assert window.others_cores is not None and window.others_cores > 0.7 * contention.usable_cpus()
    assert window.wall_s == pytest.approx(0.6, abs=0.2)


@linux
def test_a_latency_timed_next_to_busy_processes_is_contended():
    threads = contention.usable_cpus()
    procs = _hogs(threads)
    try:
        time.sleep(0.3)
        x = torch.randn(64, 64)
        r = measure_latency(lambda: x @ x, device="cpu", threads=threads, warmup=2, repeats=5, min_time_s=0.3)
    finally:
        _stop(procs)
    assert r.contended is True and r.host["contended"] is True
    assert any("other processes kept" in reason for reason in r.host["reasons"]), r.host["reasons"]
    assert r.host["threads"] == threads and r.host["cpus"] == contention.usable_cpus()
    assert r.host["calibration"]["seconds"] > 0
    assert r.as_dict()["contended"] is True  # stored with the record
    json.dumps(r.as_dict())


def test_crowded_counts_only_the_cores_the_timing_needs(monkeypatch):
    monkeypatch.setattr(contention, "usable_cpus", lambda: 4)
    # 2 threads timed on 4 cores: others may use the 2 free cores (plus the margin)
    assert crowded(LoadWindow(1.0, 2.0, 0.0), threads=2) == []
    assert crowded(LoadWindow(1.0, 2.0 + contention.CORE_MARGIN + 0.05, 0.0), threads=2)
    # every core timed: any sustained use by others is interference
    assert crowded(LoadWindow(1.0, 0.8, 0.0), threads=4)
    # steal
    assert "steal" in crowded(LoadWindow(1.0, 0.0, 0.2), threads=1)[0]
    # nothing readable (not Linux): nothing claimed
    assert crowded(LoadWindow(1.0, None, None), threads=4) == []


def test_a_slow_calibration_marks_the_run_contended(monkeypatch):
    monkeypatch.setattr(contention, "usable_cpus", lambda: 8)
    quiet = LoadWindow(1.0, 0.0, 0.0)
    slow = Calibration("w", seconds=3e-3, best_s=1e-3, slowdown=3.0)
    h = host_load(quiet, 1, slow, load_before=0.1)
    assert h.contended and "calibration workload ran 3.00× slower" in h.reasons[0]
    ok = Calibration("w", seconds=1.1e-3, best_s=1e-3, slowdown=1.1)
    assert not host_load(quiet, 1, ok, load_before=0.1).contended
    first = Calibration("w", seconds=1e-3, best_s=None, slowdown=None)  # a machine's first calibration
    assert not host_load(quiet, 1, first, load_before=None).contended


def test_calibration_keeps_the_machines_best(tmp_path, monkeypatch):
    path = tmp_path / "cal.json"
    monkeypatch.setenv("ADAPTCONV_CALIBRATION", str(path))
    first = contention.calibrate("cpu", threads=1, samples=3)
    assert first.best_s is None and first.slowdown is None  # nothing to compare with yet
    table = json.loads(path.read_text())
    ((key, best),) = table.items()
    assert "cpu|" in key and "threads=1" in key and best == pytest.approx(first.seconds, rel=1e-5)
    second = contention.calibrate("cpu", threads=1, samples=3)
    assert second.best_s == pytest.approx(best, rel=1e-5)  # the best before this calibration
    assert second.slowdown == pytest.approx(second.seconds / second.best_s, rel=1e-2)
    # the file keeps the faster of the two
    assert json.loads(path.read_text())[key] == pytest.approx(min(best, second.seconds), rel=1e-5)
    # a damaged file is an empty history, and is rewritten
    path.write_text("{not json")
    third = contention.calibrate("cpu", threads=1, samples=3)
    assert third.best_s is None and json.loads(path.read_text())


def test_wait_for_quiet_gives_up_after_its_bound(monkeypatch):
    monkeypatch.setattr(contention, "crowded", lambda window, threads: ["busy"])
    t0 = time.perf_counter()
    waited, reasons = contention.wait_for_quiet(1, max_wait_s=0.5)
    assert reasons == ["busy"] and 0.5 <= waited < 1.5 and time.perf_counter() - t0 < 1.5
    monkeypatch.setattr(contention, "crowded", lambda window, threads: [])
    waited, reasons = contention.wait_for_quiet(1, max_wait_s=10)
    assert reasons == [] and waited < 1.0


def test_host_check_can_be_turned_off():
    r = measure_latency(lambda: None, device="cpu", warmup=1, repeats=3, min_time_s=0.0, check_host=False)
    assert r.contended is None and r.host is None


def test_cpu_mhz_where_readable():
    mhz = contention.cpu_mhz()
    if mhz is not None:
        assert 0 < mhz["min"] <= mhz["mean"] <= mhz["max"]
