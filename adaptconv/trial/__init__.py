"""One trial: a validated config → train, evaluate, measure → a record."""

from .config import TrialConfig, parse_trial_config

__all__ = ["TrialConfig", "parse_trial_config", "run_trial"]


def __getattr__(name: str):
    # the runner (torch) is imported on first use, so reading configs does not import torch
    if name == "run_trial":
        from .runner import run_trial

        return run_trial
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
