"""Every training task, by the name a recipe's ``task`` key gives: the one place a task is registered.

A task is one module here (``sft.py``, ``edit.py``, ``hint.py``) plus
its recipe class in ``mmtune.config.schema.TASK_RECIPES``.
"""

from __future__ import annotations

from mmtune.training.tasks.base import Task
from mmtune.training.tasks.edit import EditTask
from mmtune.training.tasks.hint import HintTask
from mmtune.training.tasks.sft import SftTask

TASKS: dict[str, Task] = {"sft": SftTask(), "edit": EditTask(), "hint": HintTask()}
