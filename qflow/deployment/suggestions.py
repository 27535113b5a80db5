"""The "did you mean" part of a fix: a typo is named with its likely correction."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def guess(word: str, choices: Iterable[Any], otherwise: str) -> str:
    """A fix that starts with the closest valid choice, when one is close enough."""
    import difflib  # only for bad input: not part of every start

    close = difflib.get_close_matches(word, [str(c) for c in choices], n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}? Otherwise {otherwise}" if close else otherwise


def steps_listing(paths: Iterable[str], limit: int = 8) -> str:
    """' (steps: /a, /b, ...)' for a fix that found no close match."""
    items = list(paths)
    shown = ", ".join(items[:limit]) + (", ..." if len(items) > limit else "")
    return f" (steps: {shown})" if items else ""
