"""The two toy tasks: text-to-image on the shapes captions (t2i) and class-to-image on the digits (c2i)."""
from __future__ import annotations

from ilf.errors import ILFConfigError

TASKS: tuple[str, ...] = ("t2i", "c2i")


def check_task(task: str) -> str:
    """Return `task` if it is a toy task.

    Args:
        task: "t2i" or "c2i".

    Returns:
        `task`, unchanged.

    Raises:
        ILFConfigError: `task` is not a toy task.
    """
    if task not in TASKS:
        raise ILFConfigError("task", task, TASKS)
    return task
