"""The ``bindings`` section: step paths to ordered candidate locations, with their options.

A binding is a location name, a list of them, or a mapping with ``locations`` and the
options (``allocation``, ``placement``, ``expected_seconds``) it sets for its steps.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ruamel.yaml.comments import CommentedMap, CommentedSeq

from qflow.deployment.model import DEFAULT_BINDING, PLACEMENT_RULES, SUPPORTED_ALLOCATIONS
from qflow.deployment.problems import ProblemCollector
from qflow.deployment.suggestions import guess
from qflow.deployment.yaml_nodes import brief, item_line, join_path, key_line, plain

BINDING_OPTIONS = ("allocation", "placement", "expected_seconds")
"""Keys a binding written as a mapping may have besides ``locations``."""


def _no_options() -> dict[str, dict[str, Any]]:
    return {option: {} for option in BINDING_OPTIONS}


def parse_bindings(
    report: ProblemCollector, data: CommentedMap, declared: list[Any]
) -> tuple[dict[str, list[str]], dict[str, int], dict[str, dict[str, Any]]]:
    """(binding key -> candidates, binding key -> line, option -> binding key -> setting);
    bad bindings are reported and left out."""
    if "bindings" not in data:
        return {}, {}, _no_options()
    node = data["bindings"]
    line = key_line(data, "bindings", 1)
    if not isinstance(node, CommentedMap):
        report.add(
            line,
            "bindings",
            f"expected a mapping of step paths to locations, got {brief(node)}",
            "write e.g. `bindings: {default: here, /loop/annealing: [compute, here]}`",
        )
        return {}, {}, _no_options()
    names = [n for n in declared if isinstance(n, str)]
    bindings: dict[str, list[str]] = {}
    lines: dict[str, int] = {}
    options = _no_options()
    for key, value in node.items():
        kline = key_line(node, key, line)
        path = join_path("bindings", str(key))
        if not isinstance(key, str) or not (key == DEFAULT_BINDING or key.startswith("/")):
            report.add(
                kline,
                path,
                f"binding key must be {DEFAULT_BINDING!r} or an absolute step path "
                f"starting with '/', got {brief(key)}",
                f"write /{str(key).strip('/')} (the step's path from the top workflow) "
                f"or {DEFAULT_BINDING}",
            )
            continue
        if isinstance(value, CommentedMap):  # {locations: ..., allocation: ...}
            value, chosen = _binding_mapping(report, value, path, kline)
            if value is None:
                continue
            for option, setting in chosen.items():
                options[option][key] = setting
        normal = "/" + "/".join(p for p in key.split("/") if p)
        if key != DEFAULT_BINDING and (key != normal or normal == "/"):
            report.add(
                kline,
                path,
                "a step path has no empty segments and no trailing '/'",
                f"write {normal}" if normal != "/" else f"use {DEFAULT_BINDING} for every step",
            )
            continue
        if value is None or (isinstance(value, str | CommentedSeq) and len(value) == 0):
            report.add(
                kline,
                path,
                f"expected a location name or a non-empty list of names, got {brief(value)}",
                f"list candidate locations in order of preference, e.g. {key}: "
                f"[{', '.join(names[:2]) or 'here'}]",
            )
            continue
        items = [(value, kline)] if isinstance(value, str) else None
        if isinstance(value, CommentedSeq):
            items = [(v, item_line(value, i, kline)) for i, v in enumerate(value)]
        if items is None:
            report.add(
                kline,
                path,
                f"expected a location name or a list of names, got {brief(value)}",
                f"write e.g. {key}: [{', '.join(names[:2]) or 'here'}]",
            )
            continue
        candidates = _candidates(report, items, path, isinstance(value, CommentedSeq), declared)
        if candidates is not None:
            bindings[key] = candidates
            lines[key] = kline
    for key, hints in list(options["expected_seconds"].items()):
        options["expected_seconds"][key] = _hints_for(
            report, node, key, hints, bindings.get(key, [])
        )
    return bindings, lines, options


def _candidates(
    report: ProblemCollector,
    items: list[tuple[Any, int]],
    path: str,
    listed: bool,
    declared: list[Any],
) -> list[str] | None:
    """The candidate locations of one binding (items with their lines); None if one is bad."""
    names = [n for n in declared if isinstance(n, str)]
    candidates: list[str] = []
    ok = True
    for i, (item, iline) in enumerate(items):
        ipath = f"{path}[{i}]" if listed else path
        if not isinstance(item, str):
            report.add(
                iline,
                ipath,
                f"expected a location name, got {brief(plain(item))}",
                f"use one of the declared locations: {', '.join(names) or 'none'}",
            )
            ok = False
        elif item not in declared:
            report.add(
                iline,
                ipath,
                f"unknown location {item!r} (declared: {', '.join(names) or 'none'})",
                guess(item, names, f"declare {item} under locations, or use a declared one"),
            )
            ok = False
        elif item in candidates:
            report.add(
                iline,
                ipath,
                f"location {item!r} is listed twice",
                "list each candidate location once, in order of preference",
            )
            ok = False
        else:
            candidates.append(item)
    return candidates if ok else None


def _hints_for(
    report: ProblemCollector, node: CommentedMap, key: str, hints: Any, candidates: list[str]
) -> dict[str, float]:
    """``expected_seconds`` of a binding: one number for every candidate, or a mapping
    of some candidates to numbers."""
    line = key_line(node[key], "expected_seconds", key_line(node, key, 1))
    path = f"bindings.{key}.expected_seconds"
    fix = "give seconds >= 0, e.g. expected_seconds: 30 or {qpu: 5, local: 40}"
    if isinstance(hints, int | float) and not isinstance(hints, bool) and hints >= 0:
        return dict.fromkeys(candidates, float(hints))
    if not isinstance(hints, Mapping):
        report.add(line, path, f"expected a number or a mapping, got {brief(hints)}", fix)
        return {}
    result: dict[str, float] = {}
    for location, seconds in hints.items():
        if location not in candidates:
            listed = ", ".join(candidates) or "its locations"
            fix_name = guess(str(location), candidates, f"name one of {listed}")
            report.add(line, f"{path}.{location}",
                       f"{location!r} is not a candidate of this binding", fix_name)  # fmt: skip
        elif isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds < 0:
            report.add(line, f"{path}.{location}",
                       f"expected seconds >= 0, got {brief(seconds)}", fix)  # fmt: skip
        else:
            result[location] = float(seconds)
    return result


def _binding_mapping(
    report: ProblemCollector, node: CommentedMap, path: str, line: int
) -> tuple[Any, dict[str, Any]]:
    """The locations and the options of a binding written as a mapping."""
    keys = ("locations", *BINDING_OPTIONS)
    for key in node:
        if key not in keys:
            report.unknown_key(node, key, path, keys)
    if node.get("locations") is None:
        report.add(line, path, "a binding written as a mapping needs `locations`",
                   "write e.g. {locations: [compute], allocation: held}")  # fmt: skip
    allocation = _choice(report, node, "allocation", path, line, SUPPORTED_ALLOCATIONS)
    placement = _choice(report, node, "placement", path, line, PLACEMENT_RULES)
    chosen = {"allocation": allocation, "placement": placement,
              "expected_seconds": plain(node.get("expected_seconds"))}  # fmt: skip
    return node.get("locations"), {k: v for k, v in chosen.items() if v is not None}


def _choice(
    report: ProblemCollector,
    node: CommentedMap,
    key: str,
    path: str,
    line: int,
    allowed: tuple[str, ...],
) -> Any:
    """The binding's ``key`` if it is one of ``allowed`` (None: unset, or reported)."""
    value = node.get(key)
    if value is None or value in allowed:
        return value
    what = "allocation strategy" if key == "allocation" else "placement rule"
    report.add(
        key_line(node, key, line),
        f"{path}.{key}",
        f"unknown {what} {brief(value)}",
        guess(str(value), allowed, f"use one of {', '.join(allowed)}"),
    )
    return None
