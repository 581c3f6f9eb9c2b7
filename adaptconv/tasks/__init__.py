"""The tasks: each module owns its data, network, loss and metrics.

Tasks are found by name in one :class:`adaptconv.plugins.Registry`: the built-ins of
:data:`adaptconv.plugins.BUILTIN_TASKS` and the ``adaptconv.tasks`` entry points of plugin packages
(each naming a :class:`Task` subclass). A task's module is imported only when the task is asked for.
"""

from __future__ import annotations

from typing import Any

from ..plugins import BUILTIN_TASKS, TASKS_GROUP, PluginError, Registry
from ..schema import ConfigError
from .base import Task


def _task_error(message: str) -> ConfigError:
    return ConfigError([f"task: {message}"])


def _check(name: str, cls: Any, source: str) -> None:
    if not (isinstance(cls, type) and issubclass(cls, Task)):
        raise _task_error(f"{source} registers task {name!r} but is not a subclass of adaptconv.tasks.Task")
    if getattr(cls, "name", None) != name:
        raise _task_error(
            f"{source} registers task {name!r} but its class attribute name is "
            f"{getattr(cls, 'name', None)!r}; they must agree (the trials record the task's name)"
        )


TASKS: Registry[type[Task]] = Registry("task", TASKS_GROUP, BUILTIN_TASKS, _check, _task_error)


def list_tasks() -> list[str]:
    """Every task's name, built-ins first; nothing is imported."""
    return TASKS.names()


def get_task(name: str) -> type[Task]:
    return TASKS.get(name)


def task_source(name: str) -> str:
    """Where task ``name`` comes from ("module:Class" or "plugin DIST (module:Class)")."""
    return TASKS.source(name)


def task_plugin_errors() -> list[PluginError]:
    """Task plugins that could not be registered, with the reason."""
    return TASKS.errors()


__all__ = ["TASKS", "Task", "get_task", "list_tasks", "task_plugin_errors", "task_source"]
