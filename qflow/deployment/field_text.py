"""A config model's fields in words: type phrases, constraints, defaults, examples.

Both the fixes of validation messages and the reference tables read the pydantic models, so
what a message asks for is what the documentation says.
"""

from __future__ import annotations

import enum
import types
import typing
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path, PurePath
from typing import Any, Literal

from pydantic import BaseModel, SecretBytes, SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined


def fields_at(model: type[BaseModel], loc: Sequence[Any]) -> dict[str, FieldInfo]:
    """The fields of the (nested) model that ``loc`` points into."""
    current: Any = model
    for part in loc:
        _, annotation = field_at(current, (part,))
        current = strip_optional(annotation)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return dict(current.model_fields)
    return {}


def field_at(model: type[BaseModel], loc: Sequence[Any]) -> tuple[FieldInfo | None, Any]:
    """The field and the annotation that ``loc`` ends on, as far as it can be followed."""
    info: FieldInfo | None = None
    annotation: Any = model
    for part in loc:
        target = strip_optional(annotation)
        origin = typing.get_origin(target)
        args = typing.get_args(target)
        if isinstance(target, type) and issubclass(target, BaseModel) and isinstance(part, str):
            if part not in target.model_fields:
                return info, None
            info = target.model_fields[part]
            annotation = info.annotation
        elif isinstance(part, int) and origin in (list, tuple, set, frozenset) and args:
            annotation = args[0]
            info = None
        elif origin in (dict, Mapping) and len(args) == 2:
            annotation = args[1]
            info = None
        else:  # union member tags and the like: the field itself is the best description
            break
    return info, annotation


def strip_optional(annotation: Any) -> Any:
    """Drop Annotated wrappers and ``None`` from unions (optional keys may simply be left out)."""
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(members) == 1:
            return strip_optional(members[0])
    return annotation


def _constraints(info: FieldInfo | None, annotation: Any) -> list[Any]:
    metadata = list(info.metadata) if info is not None else []
    while typing.get_origin(annotation) is typing.Annotated:
        annotation, *extra = typing.get_args(annotation)
        metadata.extend(extra)
    return metadata


def describe(info: FieldInfo | None, annotation: Any = PydanticUndefined) -> str:
    """'an integer >= 1', 'one of: per-step, held', 'a list of strings', ..."""
    if annotation is PydanticUndefined:
        annotation = info.annotation if info is not None else Any
    text = _type_phrase(strip_optional(annotation))
    for meta in _constraints(info, annotation):
        for attr, word in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            if getattr(meta, attr, None) is not None:
                text += f" {word} {getattr(meta, attr)}"
        if getattr(meta, "min_length", None):
            text += f" (at least {meta.min_length} long)"
        if getattr(meta, "max_length", None) is not None:
            text += f" (at most {meta.max_length} long)"
        if getattr(meta, "pattern", None):
            text += f" matching {meta.pattern}"
    return text


_PHRASES: dict[Any, tuple[str, str]] = {
    bool: ("true or false", "booleans"),
    int: ("an integer", "integers"),
    float: ("a number", "numbers"),
    str: ("a string", "strings"),
    Path: ("a path", "paths"),
    PurePath: ("a path", "paths"),
    SecretStr: ("a string", "strings"),
    SecretBytes: ("a string", "strings"),
}


def _type_phrase(annotation: Any, plural: bool = False) -> str:
    annotation = strip_optional(annotation)
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation in _PHRASES:
        return _PHRASES[annotation][plural]
    choices = literal_choices(annotation)
    if choices:
        return "one of: " + ", ".join(choices)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_phrase(a, plural) for a in args if a is not type(None))
    if origin in (list, tuple, set, frozenset, Sequence, Collection) or annotation in (list, tuple):
        if plural:
            return "lists"
        return f"a list of {_type_phrase(args[0], True)}" if args else "a list"
    if (
        origin in (dict, Mapping)
        or annotation is dict
        or (isinstance(annotation, type) and issubclass(annotation, BaseModel))
    ):
        return "mappings" if plural else "a mapping"
    if annotation is Any:
        return "values" if plural else "any value"
    return getattr(annotation, "__name__", str(annotation))


def literal_choices(annotation: Any) -> list[str]:
    annotation = strip_optional(annotation)
    if typing.get_origin(annotation) is Literal:
        return [str(a) for a in typing.get_args(annotation)]
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return [str(m.value) for m in annotation]
    return []


def default_value(info: FieldInfo) -> Any:
    if info.default_factory is not None:
        try:
            return info.default_factory()  # type: ignore[call-arg]
        except TypeError:  # a factory that needs the other fields' values
            return None
    return None if info.default is PydanticUndefined else info.default


def example_value(info: FieldInfo | None, annotation: Any, key: str) -> Any:
    """A value that would be accepted, for the 'e.g.' of a fix."""
    if info is not None and not info.is_required():
        default = default_value(info)
        if default not in (None, [], {}, ""):
            return default
    for meta in _constraints(info, annotation):
        if getattr(meta, "ge", None) is not None:
            return meta.ge
        if getattr(meta, "gt", None) is not None:
            return meta.gt + 1
    base = strip_optional(annotation)
    choices = literal_choices(base)
    if choices:
        return choices[0]
    return {bool: True, int: 1, float: 1.0}.get(base, f"<{key}>")


def yaml_scalar(value: Any) -> str:
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(yaml_scalar(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {yaml_scalar(v)}" for k, v in value.items()) + "}"
    return str(value)


def first_sentence(description: str) -> str:
    """The first sentence of a field description, as a lower-case clause."""
    first = " ".join(description.split()).split(". ")[0].rstrip(".")
    if len(first) > 1 and first[1].islower():
        first = first[0].lower() + first[1:]
    return first
