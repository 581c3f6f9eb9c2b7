"""One trial: a validated config → train, evaluate, measure → a record."""

from .config import TrialConfig, parse_trial_config
from .runner import run_trial

__all__ = ["TrialConfig", "parse_trial_config", "run_trial"]
