"""``run_trial(config) -> record``: train, evaluate and measure one configuration.

A trial never takes the process down: a non-finite loss gives status ``diverged`` (with the step),
running out of memory gives ``oom`` (with the batch size), anything else ``error`` (with the message
and traceback). Only an invalid configuration raises (:class:`~adaptconv.schema.ConfigError`), before
anything runs.
"""

from __future__ import annotations

import copy
import logging
import math
import random
import time
import traceback
from typing import Any

import numpy as np
import torch
from torch import nn

from ..measure import environment
from ..ops.base import notify_train_step
from ..schema import ConfigError
from ..tasks import get_task
from .config import TrialConfig, parse_trial_config

log = logging.getLogger(__name__)
#: one line every tenth of training (step, loss, elapsed, ETA): where no progress bar can be seen
#: (a worker's log, SLURM's output, ``adaptconv trial`` redirected), this says the trial moves on
progress_log = logging.getLogger("adaptconv.progress")
PROGRESS_LINES = 10
#: before timing, wait up to this long for the other processes to leave the cores free (a latency taken
#: on an oversubscribed CPU is quantised to scheduler ticks); one still contended is flagged, not hidden
QUIET_WAIT_S = 10.0
#: ... and at most this long in all, per process: on a machine that stays busy, a sweep of hundreds of
#: timings must not wait 10 s each (they are taken and flagged contended)
QUIET_WAIT_BUDGET_S = 60.0
_quiet_wait_left = QUIET_WAIT_BUDGET_S  # what this process may still wait


def _duration(seconds: float) -> str:
    return (
        f"{seconds:.1f} s"
        if seconds < 90
        else f"{seconds / 60:.1f} min"
        if seconds < 5400
        else f"{seconds / 3600:.1f} h"
    )


RECORD_SCHEMA = 1


class Diverged(RuntimeError):
    def __init__(self, step: int, loss: float) -> None:
        super().__init__(f"non-finite loss {loss} at step {step}")
        self.step, self.loss = step, loss


def is_oom(exc: BaseException) -> bool:
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    text = str(exc)
    return isinstance(exc, (RuntimeError, MemoryError)) and (
        "out of memory" in text or "can't allocate memory" in text or isinstance(exc, MemoryError)
    )


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(["device: 'cuda' was asked for but torch.cuda.is_available() is False"])
    return torch.device(name)


def build_optimizer(cfg: TrialConfig, model: nn.Module) -> torch.optim.Optimizer:
    o = cfg.optimizer
    params = [p for p in model.parameters() if p.requires_grad]
    if o.name == "sgd":
        return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    cls = torch.optim.AdamW if o.name == "adamw" else torch.optim.Adam
    return cls(params, lr=o.lr, weight_decay=o.weight_decay)


def build_schedule(cfg: TrialConfig, optimizer, total_steps: int):
    s = cfg.schedule
    step_every = s.step_every or max(1, total_steps // 3)

    def factor(step: int) -> float:
        if s.warmup_steps and step < s.warmup_steps:
            return (step + 1) / s.warmup_steps
        if s.name == "cosine":
            span = max(1, total_steps - s.warmup_steps)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - s.warmup_steps) / span)))
        if s.name == "step":
            return s.gamma ** (step // step_every)
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class EpochBatches:
    """Shuffled batches, epoch after epoch, whose order depends only on (seed, epoch): a resumed
    trial sees exactly the batches an uninterrupted one would have seen."""

    def __init__(self, dataset, batch_size: int, seed: int) -> None:
        self.dataset, self.batch_size, self.seed = dataset, batch_size, seed
        n = len(dataset)
        self.per_epoch = n // batch_size if n >= batch_size else 1
        self.n = n

    def batches(self, start: int):
        """Yield batches from global batch index ``start`` on."""
        from torch.utils.data import default_collate

        index = start
        while True:
            epoch, offset = divmod(index, self.per_epoch)
            if hasattr(self.dataset, "set_epoch"):
                self.dataset.set_epoch(epoch)
            order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 1_000_003 + epoch))
            for b in range(offset, self.per_epoch):
                idx = order[b * self.batch_size : (b + 1) * self.batch_size].tolist()
                getitems = getattr(self.dataset, "__getitems__", None)
                samples = getitems(idx) if getitems else [self.dataset[i] for i in idx]
                yield default_collate(samples)
                index += 1


def _save_checkpoint(path: str, state: dict) -> None:
    """torch.save through a temporary file and a rename: a kill never leaves half a checkpoint.
    The file gets the umask's mode, like the records beside it."""
    from ..atomic import open_atomic

    with open_atomic(path) as f:
        torch.save(state, f)


def _finite(obj: Any) -> Any:
    """JSON-safe: NaN/inf → None, tuples → lists, tensors → numbers."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return _finite(obj.item() if obj.numel() == 1 else obj.tolist())
    if isinstance(obj, (np.floating, np.integer)):
        return _finite(obj.item())
    return obj


def _auxiliary_modules(model: nn.Module) -> list[nn.Module]:
    """Modules adding a term to the training loss: any with an ``auxiliary_loss() -> Tensor`` method
    (e.g. sparse_gated's sparsity loss toward its budget)."""
    return [m for m in model.modules() if callable(getattr(m, "auxiliary_loss", None))]


def _gated_modules(model: nn.Module) -> list[nn.Module]:
    """Auxiliary-loss modules that also report ``active_fraction()`` (pixel-gated operators)."""
    return [m for m in _auxiliary_modules(model) if callable(getattr(m, "active_fraction", None))]


def _mean(xs: list) -> float | None:
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def _evaluate_with_active_fraction(task, model: nn.Module, test_set, gated: list[nn.Module]) -> dict[str, Any]:
    """``task.evaluate`` plus ``active_fraction``: the mean over the modules exposing
    ``active_fraction()`` (fraction of active pixels in their last forward) and over the test batches."""
    seen: list = []
    hooks = [m.register_forward_hook(lambda mod, args, out: seen.append(mod.active_fraction())) for m in gated]
    try:
        metrics = task.evaluate(model, test_set)
    finally:
        for hook in hooks:
            hook.remove()
    return {**metrics, "active_fraction": _mean(seen)}


def train(
    task,
    model: nn.Module,
    train_set,
    test_set,
    cfg: TrialConfig,
    record: dict,
    checkpoint: str | None = None,
    checkpoint_every_s: float = 120.0,
    progress=None,
) -> None:
    """The training loop; fills ``record["curve"]`` as it goes.

    With ``checkpoint`` (a file path) the full training state (weights, optimiser, schedule, RNG,
    curve, position in the data) is saved atomically every ``checkpoint_every_s`` seconds, and a
    trial that finds its checkpoint resumes from it: the result is the one an uninterrupted run gives.

    Modules with an ``auxiliary_loss()`` add it to the task's loss (``curve["loss"]`` stays the task's,
    ``curve["aux_loss"]`` is the sum added); modules with ``active_fraction()`` (pixel-gated operators)
    get ``curve["active_fraction"]`` (training masks), ``active_fraction`` in each evaluation and
    ``record["active_fraction"]`` (``eval``: final model on the test set; ``train``: last window).

    ``progress(phase, step, total)``, if given, is called at the start and at every logged step (the
    sweep worker notes it beside the trial, so a process that dies still says how far it got).
    """
    import os

    data = EpochBatches(train_set, cfg.batch_size, cfg.seed)
    total = cfg.steps if cfg.steps is not None else cfg.epochs * data.per_epoch
    optimizer = build_optimizer(cfg, model)
    schedule = build_schedule(cfg, optimizer, total)
    aux_modules = _auxiliary_modules(model)
    gated = _gated_modules(model)
    eval_at = (
        sorted({max(1, round(total * (i + 1) / cfg.eval_points)) for i in range(cfg.eval_points)}) if total else []
    )
    curve = record["curve"] = {"step": [], "loss": [], "lr": [], "eval": []}
    every = max(1, total // 200)  # keep about 200 points of the loss curve
    window: list[float] = []
    if aux_modules:
        curve["aux_loss"] = []
    if gated:
        curve["active_fraction"] = []
    aux_window: list[float] = []
    active_window: list = []
    start = 0
    if checkpoint and os.path.exists(checkpoint):
        state = torch.load(checkpoint, map_location=task.device, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        torch.set_rng_state(state["rng"])
        if state.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        curve.update(state["curve"])
        window = state["window"]
        aux_window, active_window = state.get("aux_windows", ([], []))
        start = state["step"]
        record["resumed_from_step"] = start
        log.info("resumed from step %d of %d (%s)", start, total, checkpoint)
    last_save = started = time.monotonic()
    line_every = max(1, total // PROGRESS_LINES)
    line_window: list[float] = []
    batches = data.batches(start)
    model.train()
    if progress:
        progress("train", start, total)
    for step in range(start + 1, total + 1):
        notify_train_step(model, step - 1, total)  # operators' own schedules (dynconv's temperature)
        batch = task.to_device(next(batches))
        record["last_batch_size"] = int(next(iter(batch.values())).shape[0])
        loss = task_loss = task.loss(model, batch)
        if aux_modules:
            aux = sum(m.auxiliary_loss() for m in aux_modules)
            aux_window.append(float(aux.detach()))
            if gated:
                active_window.append(_mean([m.active_fraction() for m in gated]))
            loss = task_loss + aux
        value = float(loss.detach())
        if not math.isfinite(value):
            raise Diverged(step, value)
        if aux_modules:
            value = float(task_loss.detach())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        window.append(value)
        line_window.append(value)
        if step % line_every == 0 or step == total:
            elapsed = time.monotonic() - started
            progress_log.info(
                "step %d/%d  loss %.4g  %s  ETA %s",
                step,
                total,
                sum(line_window) / len(line_window),
                _duration(elapsed),
                _duration(elapsed / (step - start) * (total - step)),
            )
            line_window = []
        if step % every == 0 or step == total:
            curve["step"].append(step)
            curve["loss"].append(sum(window) / len(window))
            curve["lr"].append(optimizer.param_groups[0]["lr"])
            window = []
            if aux_modules:
                curve["aux_loss"].append(_mean(aux_window))
                aux_window = []
            if gated:
                curve["active_fraction"].append(_mean(active_window))
                active_window = []
            if progress:
                progress("train", step, total)
        if step in eval_at and step != total:
            metrics = (
                _evaluate_with_active_fraction(task, model, test_set, gated)
                if gated
                else task.evaluate(model, test_set)
            )
            curve["eval"].append({"step": step, **metrics})
            model.train()
        if checkpoint and step < total and time.monotonic() - last_save >= checkpoint_every_s:
            _save_checkpoint(
                checkpoint,
                {
                    "step": step,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "schedule": schedule.state_dict(),
                    "rng": torch.get_rng_state(),
                    "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                    "curve": curve,
                    "window": window,
                    "aux_windows": (aux_window, active_window),
                },
            )
            last_save = time.monotonic()
    record["steps"] = total
    if gated:  # "eval" is filled in by the final evaluation (run_trial)
        record["active_fraction"] = {
            "eval": None,
            "train": curve["active_fraction"][-1] if curve["active_fraction"] else None,
        }


def measure_model(task, model: nn.Module, cfg: TrialConfig) -> dict[str, Any]:
    """Parameters, FLOPs, latency and peak memory of the trained network (inference and training step).

    One run entry per (resolution, batch size, phase), in the order of ``measure.resolutions`` (or
    ``measure.resolution``), then ``measure.batch_sizes``, then inference before the training step.
    ``resolution`` in an entry is the side asked for (or, when none is, the side of the task's own
    example input); ``input_shapes`` are the shapes actually fed. FLOPs are counted at the first
    resolution. A run that fails (out of memory at a large resolution, say) records ``status: oom``
    or ``error`` in its own entry and the others still run.
    """
    global _quiet_wait_left
    from ..measure import (
        count_flops,
        count_parameters,
        inference_step,
        measure_latency,
        measure_peak_memory,
        training_step,
    )

    m = cfg.measure
    sides = m.sides()
    out: dict[str, Any] = {"params": count_parameters(model).as_dict()}
    device = task.device
    if m.flops:
        try:
            out["flops"] = count_flops(model, task.example_inputs(1, sides[0])).as_dict()
        except Exception as exc:  # a counting failure loses the FLOPs, not the trial
            out["flops"] = {"error": f"{type(exc).__name__}: {exc}"}
    runs = []
    for side in sides:
        for bs in m.batch_sizes:
            for phase in ("inference", "train_step"):
                entry: dict[str, Any] = {"phase": phase, "batch_size": bs, "resolution": side}
                failed = False
                try:
                    # built inside the try: the inputs alone can exhaust memory at a large resolution
                    inputs = task.example_inputs(bs, side)
                    entry["input_shapes"] = [list(t.shape) for t in inputs]
                    if side is None:
                        entry["resolution"] = int(inputs[0].shape[-1])
                    net = copy.deepcopy(model)  # the training step changes weights; keep the trained model
                    if phase == "inference":
                        fn = inference_step(net, inputs)
                    else:
                        opt = torch.optim.SGD(net.parameters(), lr=1e-6)
                        # a surrogate loss: same forward/backward/optimizer work as the task's, no targets needed
                        fn = training_step(net, inputs, lambda out: out.float().square().mean(), opt)
                    if m.latency:
                        wait = min(QUIET_WAIT_S, _quiet_wait_left)
                        entry["latency"] = measure_latency(
                            fn,
                            device=device,
                            warmup=m.warmup,
                            repeats=m.repeats,
                            min_time_s=m.min_time_s,
                            quiet_wait_s=wait,
                        ).as_dict()
                        waited = (entry["latency"].get("host") or {}).get("waited_for_quiet_s") or 0.0
                        _quiet_wait_left = max(0.0, _quiet_wait_left - waited)
                    if m.memory:
                        entry["memory"] = measure_peak_memory(fn, device).as_dict()
                except Exception as exc:
                    failed = True
                    entry["status"] = "oom" if is_oom(exc) else "error"
                    entry["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                    log.info("measurement at resolution %s, batch %d, %s failed: %s", side, bs, phase, entry["error"])
                # drop this run's tensors before the next one (after the except block, whose traceback
                # would keep them alive), so an OOM here does not make the smaller runs after it fail too
                inputs = net = fn = opt = None
                if failed and device.type == "cuda":
                    torch.cuda.empty_cache()
                runs.append(entry)
    out["runs"] = runs
    return out


def run_trial(
    config: dict[str, Any] | TrialConfig,
    *,
    checkpoint: str | None = None,
    checkpoint_every_s: float = 120.0,
    progress=None,
) -> dict[str, Any]:
    """Run one trial and return its JSON-serialisable record (see the README for the schema).

    ``checkpoint``: a file for the training state, saved every ``checkpoint_every_s`` seconds; a
    trial started again with the same file resumes where it was (``record["resumed_from_step"]``).
    ``progress(phase, step, total)``: called as the trial moves on (phases setup, train, eval, measure).
    """
    t0 = time.perf_counter()
    if isinstance(config, TrialConfig):
        config = config.normalised()
    cfg = parse_trial_config(config)
    record: dict[str, Any] = {
        "schema": RECORD_SCHEMA,
        "status": "running",
        "config": cfg.normalised(),
        "metrics": {},
        "curve": {},
        "measurements": {},
        "swap": {},
        "timing": {},
    }
    device = resolve_device(cfg.device)
    threads_before = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        seed_everything(cfg.seed)
        if progress:
            progress("setup", 0, 0)
        task = get_task(cfg.task)(cfg, device)
        progress_log.info("building the data and the %s network", cfg.task)
        phase_start = time.perf_counter()
        train_set, test_set = task.build_data()
        model, record["swap"] = task.build_model(train_set)
        record["timing"]["setup_s"] = time.perf_counter() - phase_start
        phase_start = time.perf_counter()
        train(task, model, train_set, test_set, cfg, record, checkpoint, checkpoint_every_s, progress)
        record["timing"]["train_s"] = time.perf_counter() - phase_start
        phase_start = time.perf_counter()
        if progress:
            progress("eval", record["steps"], record["steps"])
        progress_log.info(
            "trained in %s; evaluating (and the trivial baselines)", _duration(record["timing"]["train_s"])
        )
        gated = _gated_modules(model)
        if gated:
            metrics = _evaluate_with_active_fraction(task, model, test_set, gated)
            record["active_fraction"]["eval"] = metrics.pop("active_fraction")
            record["metrics"] = metrics
        else:
            record["metrics"] = task.evaluate(model, test_set)
        # the task's trivial baselines on the same test data (what a trained network must beat)
        record["baselines"] = task.baselines(test_set)
        # what the report needs to rank without importing the task: headline metric and directions
        record["metric_info"] = {
            "primary": task.metrics[0] if task.metrics else None,
            "higher_is_better": dict(task.higher_is_better),
        }
        record["curve"].setdefault("eval", []).append({"step": record.get("steps", 0), **record["metrics"]})
        record["timing"]["eval_s"] = time.perf_counter() - phase_start
        phase_start = time.perf_counter()
        if progress:
            progress("measure", record["steps"], record["steps"])
        progress_log.info("evaluated in %s; measuring latency, memory and FLOPs", _duration(record["timing"]["eval_s"]))
        record["measurements"] = measure_model(task, model, cfg)
        record["timing"]["measure_s"] = time.perf_counter() - phase_start
        progress_log.info("measured in %s", _duration(record["timing"]["measure_s"]))
        record["status"] = "ok"
    except Diverged as exc:
        record.update(status="diverged", error={"message": str(exc), "step": exc.step})
    except Exception as exc:  # noqa: BLE001 - a failing trial returns its record
        if is_oom(exc):
            record.update(
                status="oom",
                error={
                    "message": str(exc).splitlines()[0],
                    "batch_size": record.get("last_batch_size", cfg.batch_size),
                },
            )
        else:
            record.update(
                status="error", error={"message": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
            )
        log.warning("trial failed (%s): %s", record["status"], record["error"]["message"])
    finally:
        # recorded while the trial's thread count is still in force
        record["environment"] = environment(precision="fp32", device=str(device))
        torch.set_num_threads(threads_before)
    record["timing"]["total_s"] = time.perf_counter() - t0
    return _finite(record)
