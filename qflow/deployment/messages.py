"""One pydantic validation error as a line, a key path, what is wrong and how to fix it."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, SecretBytes, SecretStr
from ruamel.yaml.comments import CommentedMap, CommentedSeq

from qflow.deployment.field_text import (
    describe,
    example_value,
    field_at,
    fields_at,
    first_sentence,
    literal_choices,
    strip_optional,
    yaml_scalar,
)
from qflow.deployment.suggestions import guess
from qflow.deployment.yaml_nodes import brief, item_line, join_path, key_line

_SECRET_KEY = re.compile(r"token|secret|passw|api_?key|credential", re.IGNORECASE)
"""Keys whose bad values are never quoted back: messages end up in logs."""


def pydantic_problem(
    model: type[BaseModel], node: CommentedMap, prefix: str, line: int, error: Mapping[str, Any]
) -> tuple[int, str, str, str]:
    """Turn one pydantic error into (line, key path, what is wrong, fix)."""
    loc: tuple[Any, ...] = tuple(error["loc"])
    # Follow loc through the YAML as far as it goes: the deepest key present gives the line.
    current: Any = node
    present: list[Any] = []
    for part in loc:
        if isinstance(current, CommentedMap) and part in current:
            line = key_line(current, part, line)
        elif isinstance(current, CommentedSeq) and isinstance(part, int) and part < len(current):
            line = item_line(current, part, line)
        else:
            break
        present.append(part)
        current = current[part]
    kind = error["type"]
    if kind == "missing":
        key_path = join_path(prefix, *present, loc[len(present)])
    else:
        key_path = join_path(prefix, *present)
    key = str(loc[-1]) if loc else prefix
    parent = join_path(prefix, *loc[:-1])
    info, annotation = field_at(model, loc)
    hint = f" ({first_sentence(info.description)})" if info is not None and info.description else ""
    if kind == "extra_forbidden":
        allowed = list(fields_at(model, loc[:-1]))
        return (
            line,
            key_path,
            "unknown key",
            guess(key, allowed, f"remove it; allowed keys: {', '.join(allowed)}"),
        )
    example = yaml_scalar(example_value(info, annotation, key))
    if kind == "missing":
        what = "required key is missing"
        return line, key_path, what, f"add `{key}: {example}` to {parent}{hint}"
    got = brief(error.get("input"))
    if _SECRET_KEY.search(key) or strip_optional(annotation) in (SecretStr, SecretBytes):
        got = "a value not shown here (the key holds a secret)"
    if kind in ("value_error", "assertion_error"):
        text = str(error.get("ctx", {}).get("error", error["msg"]))
        what, _, fix = text.partition(" Fix: ")
        what = what.rstrip(".")
        return line, key_path, what, fix or f"correct {key}{hint}"
    expected = describe(info, annotation) if annotation is not None else None
    if expected is None:
        return (
            line,
            key_path,
            f"{error['msg'][:1].lower()}{error['msg'][1:]}, got {got}",
            f"correct {key}{hint}",
        )
    if loc and isinstance(loc[-1], int):  # a list item: name it by its place in the list
        fix = f"make {join_path(*loc)} {expected}{hint}, e.g. {example}"
    else:
        fix = f"set {key} to {expected}{hint}, e.g. {key}: {example}"
    choices = literal_choices(annotation)
    if choices and isinstance(error.get("input"), str):
        fix = guess(error["input"], choices, fix)
    return line, key_path, f"expected {expected}, got {got}", fix
