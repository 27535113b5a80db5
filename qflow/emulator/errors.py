"""Errors the API answers as JSON with an HTTP status, never as a traceback."""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """An error answered as JSON ``{"error": message, "code": code}`` with an HTTP status."""

    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.extra = extra


class BadTask(ApiError):
    """A task body the QPU cannot run: 400 with what is wrong and where."""

    def __init__(self, message: str) -> None:
        super().__init__(400, "bad_task", message)
