"""ruamel round-trip nodes: where a key or item stands, and its plain value.

Every problem names FILE:LINE, so the parser keeps ruamel's nodes (which know their lines)
and turns them into plain values only for pydantic and for quoting bad values back.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ruamel.yaml.comments import CommentedSeq, TaggedScalar


def node_line(node: Any) -> int:
    lc = getattr(node, "lc", None)
    return lc.line + 1 if lc is not None and lc.line is not None else 1


def key_line(node: Any, key: Any, fallback: int) -> int:
    """1-based line of ``key`` in a mapping; keys pulled in by a ``<<:`` merge use ``fallback``."""
    try:
        return node.lc.key(key)[0] + 1
    except (AttributeError, KeyError, TypeError):
        return fallback


def item_line(node: CommentedSeq, index: int, fallback: int) -> int:
    try:
        return node.lc.item(index)[0] + 1
    except (AttributeError, KeyError, TypeError, IndexError):
        return fallback


def plain(value: Any) -> Any:
    """ruamel's round-trip nodes as plain dict/list/int/float/str, for pydantic."""
    if isinstance(value, TaggedScalar):
        return value.value
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, bool) or value is None:
        return value
    for kind in (int, float, str):
        if isinstance(value, kind):
            return kind(value)
    return value


def brief(value: Any) -> str:
    """How a bad value is quoted back to the user."""
    if value is None:
        return "nothing"
    if isinstance(value, Mapping):
        return "a mapping" if value else "an empty mapping"
    if isinstance(value, list):
        return "a list" if value else "an empty list"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str) and not value:
        return "an empty string"
    return repr(plain(value))


def join_path(*parts: Any) -> str:
    out = ""
    for part in parts:
        if isinstance(part, int) and not isinstance(part, bool):
            out += f"[{part}]"
        elif part != "":
            out += f".{part}" if out else str(part)
    return out
