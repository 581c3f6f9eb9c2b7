"""Measurement: latency, peak memory, FLOPs and parameters, and the environment of every record.

See ``/work/shared/reference/measurement.md`` for the protocol these functions implement.
"""

from .environment import backend_flags, environment, git_state
from .flops import FlopReport, ParameterCount, count_flops, count_parameters, deform_conv2d_flops
from .latency import LatencyResult, SampleStats, inference_step, measure_latency, summarize, training_step
from .memory import MemoryPeak, measure_peak_memory

__all__ = [
    "FlopReport",
    "LatencyResult",
    "MemoryPeak",
    "ParameterCount",
    "SampleStats",
    "backend_flags",
    "count_flops",
    "count_parameters",
    "deform_conv2d_flops",
    "environment",
    "git_state",
    "inference_step",
    "measure_latency",
    "measure_peak_memory",
    "summarize",
    "training_step",
]
