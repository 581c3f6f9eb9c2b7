"""adaptconv: a benchmark and ablation suite for content-adaptive convolutions.

The operator API below is imported on first use (module ``__getattr__``), not with the package, so
that the command line's commands that read suites and records (``status``, ``cancel``, ``collect``,
``report``, ``--help``) start without importing torch."""

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


def __getattr__(name: str):
    if name in __all__:
        from . import ops

        return getattr(ops, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
