"""What every command prints on stderr: messages, and bad input as one error with its fix."""

from __future__ import annotations

from rich.console import Console

from qflow.secrets import redact

EXIT_BAD_INPUT = 2

err = Console(stderr=True, highlight=False, soft_wrap=True)


def fail(message: str) -> int:
    """Report bad input (secrets masked); the exit status to return."""
    err.print(f"qflow: error: {redact(message)}", markup=False)
    return EXIT_BAD_INPUT
