"""adaptconv: a benchmark and ablation suite for content-adaptive convolutions."""

from .ops import (
    AdaptiveConv2d,
    OpRegistryError,
    create_op,
    get_op,
    list_ops,
    plugin_errors,
    register_op,
    resize_guide,
)

__version__ = "0.1.0"

__all__ = [
    "AdaptiveConv2d",
    "OpRegistryError",
    "create_op",
    "get_op",
    "list_ops",
    "plugin_errors",
    "register_op",
    "resize_guide",
]
