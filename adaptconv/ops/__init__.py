"""Content-adaptive convolution operators behind one interface (see :mod:`adaptconv.ops.base`)."""

from .base import AdaptiveConv2d, AdaptiveModule, resize_guide
from .registry import (
    ENTRY_POINT_GROUP,
    OpRegistryError,
    create_op,
    get_op,
    list_ops,
    op_kind,
    op_source,
    plugin_errors,
    register_op,
)

__all__ = [
    "AdaptiveConv2d",
    "AdaptiveModule",
    "ENTRY_POINT_GROUP",
    "OpRegistryError",
    "create_op",
    "get_op",
    "list_ops",
    "op_kind",
    "op_source",
    "plugin_errors",
    "register_op",
    "resize_guide",
]
