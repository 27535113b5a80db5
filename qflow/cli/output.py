"""What every command prints on stderr: messages, and bad input as one error with its fix."""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING

from qflow.secrets import redact

if TYPE_CHECKING:
    from rich.console import Console

EXIT_BAD_INPUT = 2


@cache
def _stderr() -> Console:
    """rich's console, made on first use: a ``--quiet`` run that goes well prints nothing
    and does not import it."""
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


def say(message: str, *, markup: bool = True) -> None:
    """Print one message on stderr (rich markup unless ``markup=False``)."""
    _stderr().print(message, markup=markup)


def fail(message: str) -> int:
    """Report bad input (secrets masked); the exit status to return."""
    say(f"qflow: error: {redact(message)}", markup=False)
    return EXIT_BAD_INPUT
