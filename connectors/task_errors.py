"""How a vendor connector's task calls fail, shared so callers catch one set of errors."""

from __future__ import annotations


class TaskRefused(ValueError):
    """A task this QPU cannot take (bad fields, too large, wrong shape); nothing was started."""


class TaskCancelled(Exception):
    """Raised inside a work function that noticed its task was stopped."""


class TaskNotFound(KeyError):
    """No task with this id (never submitted here, or the connector was restarted)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "task not found"


class ResultNotReady(RuntimeError):
    """The task has no result: it is not completed (still running, failed or cancelled)."""
