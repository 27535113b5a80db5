"""deployment.yml: where each workflow step may run, validated before anything is allocated.

A deployment declares the locations L (each served by a connector), the bindings M from step
paths to ordered candidate locations, and the policies. Every problem is reported at once, as
``FILE:LINE: key.path: what is wrong. Fix: what to do``, so a user fixes the file in one pass
and ``qflow run`` can exit 2 before submitting anything.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import re
import types
import typing
from collections.abc import Collection, Iterable, Mapping, Sequence
from pathlib import Path, PurePath
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretBytes,
    SecretStr,
    ValidationError,
    field_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined
from ruamel.yaml import YAML, YAMLError
from ruamel.yaml.comments import CommentedMap, CommentedSeq, TaggedScalar

from qflow.connector import LocationConfig, UnknownConnectorError, connector_class, registry

SCHEMA_VERSION = 1
TOP_LEVEL_KEYS = ("version", "locations", "bindings", "policy")
DEFAULT_BINDING = "default"
EMBEDDED_DEFAULT = Path(__file__).with_name("local.yml")
EMBEDDED_SOURCE = "<embedded local.yml>"

Allocation = Literal["per-step", "held", "malleable", "auto"]
SUPPORTED_ALLOCATIONS: tuple[str, ...] = ("per-step", "held", "malleable", "auto")
PlacementRule = Literal["first", "earliest-finish"]
PLACEMENT_RULES: tuple[str, ...] = ("first", "earliest-finish")

_LOCATION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_SECRET_KEY = re.compile(r"token|secret|passw|api_?key|credential", re.IGNORECASE)
"""Keys whose bad values are never quoted back: messages end up in logs."""


class DeploymentError(Exception):
    """A deployment that cannot be used; ``messages`` holds every problem found, in file order."""

    def __init__(self, messages: list[str]) -> None:
        self.messages = list(messages)
        super().__init__("\n".join(self.messages))


class UnboundStepError(LookupError):
    """A step that no binding (nor ``default``) maps to a location."""


class Policy(BaseModel):
    """How steps get their resources (docs/strategies.md)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    allocation: Allocation = Field(
        default="per-step",
        description="per-step: every step execution gets its own allocation, released when "
        "it ends; held: a location's nodes are allocated once for the whole run; malleable: a "
        "one-node allocation is kept, the other nodes are released during quantum phases; auto: "
        "like malleable, deciding at each quantum phase from what the run measured. Applies to "
        "Slurm locations (a location's `allocation` key overrides it).",
    )

    placement: PlacementRule = Field(
        default="first",
        description="How a step's location is chosen among its binding's candidates. first: "
        "the quantum candidates in order (waiting for them up to their max_wait), then the "
        "classical ones in order, waiting for whichever frees first; earliest-finish: the "
        "candidate expected to finish the step first, from measured run and queue times "
        "(docs/placement.md). A binding's or its first location's `placement` overrides it.",
    )
    history: str | None = Field(
        default=None,
        description="File where run times measured by earlier runs are kept for "
        "earliest-finish placement (per site: every run of this user adds to it); `none` "
        "keeps none. Unset: $XDG_STATE_HOME/qflow/history.json (~/.local/state/qflow).",
    )

    @field_validator("allocation")
    @classmethod
    def _implemented(cls, value: str) -> str:
        if value not in SUPPORTED_ALLOCATIONS:
            raise ValueError(
                f"allocation {value!r} is not supported yet (supported: "
                f"{', '.join(SUPPORTED_ALLOCATIONS)}). Fix: set allocation: per-step"
            )
        return value


@dataclasses.dataclass(frozen=True)
class Deployment:
    """A validated deployment: locations in file order, bindings, policy."""

    source: str
    """Where it came from, as shown in messages (a file name or ``<embedded local.yml>``)."""
    version: int
    locations: dict[str, LocationConfig]
    bindings: dict[str, list[str]]
    """Binding key (``default`` or an absolute step path) -> ordered candidate locations."""
    policy: Policy = dataclasses.field(default_factory=Policy)
    binding_allocations: dict[str, str] = dataclasses.field(default_factory=dict)
    """Binding key -> the allocation strategy that binding sets for its steps."""
    binding_placements: dict[str, str] = dataclasses.field(default_factory=dict)
    """Binding key -> the placement rule that binding sets for its steps."""
    binding_hints: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)
    """Binding key -> location -> the run time its steps are expected to take there."""
    binding_lines: dict[str, int] = dataclasses.field(default_factory=dict, repr=False)
    """1-based line of each binding key, for messages about bindings."""
    bindings_line: int = dataclasses.field(default=1, repr=False)
    """1-based line of the ``bindings:`` key (1 when absent), for messages about steps."""

    def candidates(self, step_path: str) -> list[str]:
        """The candidate locations of the binding of ``step_path`` (:meth:`binding_of`)."""
        return list(self.bindings[self.binding_of(step_path)])

    def allocation_for(self, step_path: str) -> str | None:
        """The strategy the binding of ``step_path`` sets; None: the location's or policy's."""
        return self.binding_allocations.get(self.binding_of(step_path))

    def placement_for(self, step_path: str) -> str:
        """The placement rule of ``step_path``: its binding's, else its first candidate
        location's, else the policy's."""
        key = self.binding_of(step_path)
        if key in self.binding_placements:
            return self.binding_placements[key]
        first = self.locations[self.bindings[key][0]]
        return getattr(first, "placement", None) or self.policy.placement

    def expected_seconds(self, step_path: str, location: str) -> float | None:
        """The ``expected_seconds`` hint of the binding of ``step_path`` for ``location``."""
        return self.binding_hints.get(self.binding_of(step_path), {}).get(location)

    def binding_of(self, step_path: str) -> str:
        """The most specific binding of ``step_path``: exact, nearest ancestor, else default."""
        if not step_path.startswith("/"):
            raise ValueError(f"step path must be absolute (start with '/'), got {step_path!r}")
        path = step_path.rstrip("/") or "/"
        while path not in ("", "/"):
            if path in self.bindings:
                return path
            path = path.rsplit("/", 1)[0]
        if DEFAULT_BINDING in self.bindings:
            return DEFAULT_BINDING
        raise UnboundStepError(self._unbound(step_path))

    def _unbound(self, step_path: str) -> str:
        return (
            f"{self.source}:{self.bindings_line}: bindings: step {step_path} is not bound to any "
            f"location. Fix: add a binding for {step_path} or a default"
        )

    def check_steps(self, step_paths: Iterable[str]) -> list[str]:
        """Problems of this deployment against a workflow's steps, in file order; [] if none.

        ``step_paths`` are step paths (``/loop``, ``/loop/annealing``). Only leaves (paths no
        other path descends from) need a location: a sub-workflow step runs no command of
        its own. A binding key that is no step path (nor an ancestor of one) is an error too:
        it is usually a typo, and the step it meant would silently run elsewhere. The embedded
        default is exempt from that, since it serves every workflow.
        """
        steps = list(dict.fromkeys(step_paths))
        known = _with_ancestors(steps)
        problems: list[tuple[int, str]] = []
        if DEFAULT_BINDING not in self.bindings:
            parents = {path.rsplit("/", 1)[0] for path in known}
            for step in (s for s in steps if s.rstrip("/") not in parents):
                try:
                    self.candidates(step)
                except UnboundStepError:
                    problems.append((self.bindings_line, self._unbound(step)))
        if self.source != EMBEDDED_SOURCE:
            for key in (k for k in self.bindings if k != DEFAULT_BINDING and k not in known):
                line = self.binding_lines.get(key, self.bindings_line)
                fix = _guess(key, known, "remove the binding or bind an existing step path")
                problems.append(
                    (
                        line,
                        f"{self.source}:{line}: bindings.{key}: the workflow has no step {key}. "
                        f"Fix: {fix}{_listing(known)}",
                    )
                )
        problems.sort(key=lambda p: p[0])
        return [message for _, message in problems]


BINDING_OPTIONS = ("allocation", "placement", "expected_seconds")
"""Keys a binding written as a mapping may have besides ``locations``."""


def _no_options() -> dict[str, dict[str, Any]]:
    return {option: {} for option in BINDING_OPTIONS}


def _with_ancestors(steps: list[str]) -> dict[str, None]:
    """Every step path and every ancestor path of one, in order."""
    known: dict[str, None] = {}
    for step in steps:
        parts = step.strip("/").split("/")
        for i in range(1, len(parts) + 1):
            known["/" + "/".join(parts[:i])] = None
    return known


def load_deployment(path: str | Path) -> Deployment:
    """Read and validate a deployment file (messages name it as given)."""
    source = str(path)
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise DeploymentError(
            [
                f"{source}: no such deployment file. Fix: check the path, or leave the "
                f"deployment out to use the embedded default (every step on this host)"
            ]
        ) from None
    except IsADirectoryError:
        inside = Path(path) / "deployment.yml"
        fix = f"give the file: {inside}" if inside.is_file() else "give the .yml file in it"
        raise DeploymentError(
            [f"{source}: is a directory, not a deployment file. Fix: {fix}"]
        ) from None
    except OSError as exc:
        raise DeploymentError(
            [
                f"{source}: cannot read the deployment file ({exc.strerror}). "
                "Fix: check its permissions (e.g. chmod u+r)"
            ]
        ) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DeploymentError([_encoding_error_message(raw, exc, source)]) from None
    return parse_deployment(text, source)


def parse_deployment(text: str, source: str) -> Deployment:
    """Validate deployment YAML; ``source`` is the file name used in messages."""
    try:
        data = YAML(typ="rt").load(text)
    except YAMLError as exc:
        raise DeploymentError([_yaml_error_message(exc, source)]) from None
    return _Parser(source).parse(data)


def embedded_default() -> Deployment:
    """The deployment used when none is given: every step on this host (``local.yml``)."""
    return parse_deployment(EMBEDDED_DEFAULT.read_text(encoding="utf-8"), EMBEDDED_SOURCE)


def reference_markdown(
    model: type[BaseModel] = LocationConfig, *, skip: Collection[str] = ()
) -> str:
    """A Markdown table of a config model's keys (type, default, description).

    Shared by ``docs/deployment.md`` and ``qflow connectors`` so the reference never drifts
    from the models; ``skip`` leaves out keys (e.g. the common ones for a connector's table).
    """
    rows = ["| key | type | default | description |", "|---|---|---|---|"]
    for name, info in model.model_fields.items():
        if name in skip:
            continue
        default = "required" if info.is_required() else f"`{_yaml_scalar(_default(info))}`"
        description = " ".join((info.description or "").split()).replace("|", "\\|")
        rows.append(f"| `{name}` | {_describe(info)} | {default} | {description} |")
    return "\n".join(rows) + "\n"


# --- parsing ----------------------------------------------------------------------------------


class _Parser:
    """One pass over the YAML tree that collects (line, message) problems."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.problems: list[tuple[int, str]] = []

    def add(self, line: int, path: str, what: str, fix: str) -> None:
        where = f"{self.source}:{line}: {path}: " if path else f"{self.source}:{line}: "
        self.problems.append((line, f"{where}{what}. Fix: {fix}"))

    def parse(self, data: Any) -> Deployment:
        if data is None:
            self.add(1, "", "the deployment is empty", _minimal_fix())
            self.fail()
        if not isinstance(data, CommentedMap):
            self.add(
                _node_line(data),
                "",
                f"the deployment must be a mapping of {', '.join(TOP_LEVEL_KEYS)}, "
                f"got {_brief(data)}",
                _minimal_fix(),
            )
            self.fail()
        for key in data:
            if key not in TOP_LEVEL_KEYS:
                self.unknown_key(data, key, "", TOP_LEVEL_KEYS)
        version = self.version(data)
        locations = self.locations(data)
        declared = data["locations"] if isinstance(data.get("locations"), CommentedMap) else {}
        bindings, binding_lines, options = self.bindings(data, list(declared))
        binding_allocations = options["allocation"]
        policy = self.policy(data)
        self.allocation_problems(data, locations, policy, bindings, binding_allocations)
        if self.problems:
            self.fail()
        return Deployment(
            source=self.source,
            version=version,
            locations=locations,
            bindings=bindings,
            policy=policy,
            binding_allocations=binding_allocations,
            binding_placements=options["placement"],
            binding_hints=options["expected_seconds"],
            binding_lines=binding_lines,
            bindings_line=_key_line(data, "bindings", 1),
        )

    def fail(self) -> typing.NoReturn:
        self.problems.sort(key=lambda p: p[0])
        raise DeploymentError([message for _, message in self.problems])

    def unknown_key(
        self, node: CommentedMap, key: Any, prefix: str, allowed: Sequence[str]
    ) -> None:
        self.add(
            _key_line(node, key, _node_line(node)),
            _join(prefix, str(key)),
            "unknown key",
            _guess(str(key), allowed, f"remove it; allowed keys: {', '.join(allowed)}"),
        )

    def version(self, data: CommentedMap) -> int:
        if "version" not in data:
            self.add(
                _node_line(data),
                "version",
                "required key is missing",
                "add `version: 1` as the first line",
            )
            return SCHEMA_VERSION
        value = _plain(data["version"])
        if isinstance(value, bool) or value != SCHEMA_VERSION or not isinstance(value, int):
            self.add(
                _key_line(data, "version", 1),
                "version",
                f"this qflow reads deployment schema version {SCHEMA_VERSION}, got {_brief(value)}",
                f"set version: {SCHEMA_VERSION} (and write the file for that schema)",
            )
        return SCHEMA_VERSION

    def locations(self, data: CommentedMap) -> dict[str, LocationConfig]:
        node = data.get("locations")
        line = _key_line(data, "locations", _node_line(data))
        example = "locations: {here: {connector: local}}"
        if "locations" not in data:
            self.add(_node_line(data), "locations", "required key is missing", f"add {example}")
            return {}
        if not isinstance(node, CommentedMap) or not node:
            self.add(
                line,
                "locations",
                f"expected a non-empty mapping of location names, got {_brief(node)}",
                f"declare at least one location, e.g. {example}",
            )
            return {}
        result: dict[str, LocationConfig] = {}
        for name, cfg in node.items():
            config = self.location(node, name, cfg)
            if config is not None:
                result[name] = config
        return result

    def location(self, parent: CommentedMap, name: Any, cfg: Any) -> LocationConfig | None:
        line = _key_line(parent, name, _node_line(parent))
        path = _join("locations", str(name))
        if not isinstance(name, str) or not _LOCATION_NAME.fullmatch(name):
            self.add(
                line,
                path,
                f"invalid location name {_brief(name)}",
                "name locations with letters, digits, '_', '.' or '-' (e.g. compute)",
            )
            return None
        if not isinstance(cfg, CommentedMap):
            self.add(
                line,
                path,
                f"expected a mapping with at least a connector key, got {_brief(cfg)}",
                f"write e.g. `{name}: {{connector: local}}`",
            )
            return None
        installed = sorted(registry())
        installed_text = ", ".join(installed) or "none"
        if "connector" not in cfg:
            self.add(
                line,
                f"{path}.connector",
                "required key is missing",
                f"add `connector: <name>` to location {name} (installed: {installed_text})",
            )
            return None
        connector = _plain(cfg["connector"])
        cline = _key_line(cfg, "connector", line)
        if not isinstance(connector, str):
            self.add(
                cline,
                f"{path}.connector",
                f"expected a connector name, got {_brief(connector)}",
                f"use one of the installed connectors: {installed_text}",
            )
            return None
        try:
            model = connector_class(connector).Config
        except UnknownConnectorError:
            self.add(
                cline,
                f"{path}.connector",
                f"unknown connector {connector!r} (installed: {installed_text})",
                _guess(
                    connector,
                    installed,
                    f"install the package that provides {connector!r}, or use an installed one",
                ),
            )
            return None
        except Exception as exc:  # a broken third-party entry point must not hide the rest
            self.add(
                cline,
                f"{path}.connector",
                f"connector {connector!r} is installed but cannot be loaded "
                f"({type(exc).__name__}: {exc})",
                f"reinstall the package that provides {connector!r}",
            )
            return None
        return self.validate(model, cfg, path, line)

    def validate(self, model: type[Any], node: CommentedMap, path: str, line: int) -> Any:
        """``model.model_validate`` with every pydantic error mapped to a line and a fix."""
        try:
            return model.model_validate(_plain(node))
        except ValidationError as exc:
            seen: set[str] = set()
            for error in exc.errors():
                line_no, key_path, what, fix = _pydantic_problem(model, node, path, line, error)
                if key_path in seen:  # one message per key, e.g. for every member of a union
                    continue
                seen.add(key_path)
                self.add(line_no, key_path, what, fix)
        except Exception as exc:  # a connector's own validator that raised something else
            self.add(
                line,
                path,
                f"the connector refused this location ({type(exc).__name__}: {exc})",
                "correct the value the connector names",
            )
        return None

    def bindings(
        self, data: CommentedMap, declared: list[Any]
    ) -> tuple[dict[str, list[str]], dict[str, int], dict[str, dict[str, Any]]]:
        if "bindings" not in data:
            return {}, {}, _no_options()
        node = data["bindings"]
        line = _key_line(data, "bindings", 1)
        if not isinstance(node, CommentedMap):
            self.add(
                line,
                "bindings",
                f"expected a mapping of step paths to locations, got {_brief(node)}",
                "write e.g. `bindings: {default: here, /loop/annealing: [compute, here]}`",
            )
            return {}, {}, _no_options()
        names = [n for n in declared if isinstance(n, str)]
        bindings: dict[str, list[str]] = {}
        lines: dict[str, int] = {}
        options = _no_options()
        for key, value in node.items():
            kline = _key_line(node, key, line)
            path = _join("bindings", str(key))
            if not isinstance(key, str) or not (key == DEFAULT_BINDING or key.startswith("/")):
                self.add(
                    kline,
                    path,
                    f"binding key must be {DEFAULT_BINDING!r} or an absolute step path "
                    f"starting with '/', got {_brief(key)}",
                    f"write /{str(key).strip('/')} (the step's path from the top workflow) "
                    f"or {DEFAULT_BINDING}",
                )
                continue
            if isinstance(value, CommentedMap):  # {locations: ..., allocation: ...}
                value, chosen = self.binding_mapping(value, path, kline)
                if value is None:
                    continue
                for option, setting in chosen.items():
                    options[option][key] = setting
            normal = "/" + "/".join(p for p in key.split("/") if p)
            if key != DEFAULT_BINDING and (key != normal or normal == "/"):
                self.add(
                    kline,
                    path,
                    "a step path has no empty segments and no trailing '/'",
                    f"write {normal}" if normal != "/" else f"use {DEFAULT_BINDING} for every step",
                )
                continue
            if value is None or (isinstance(value, str | CommentedSeq) and len(value) == 0):
                self.add(
                    kline,
                    path,
                    f"expected a location name or a non-empty list of names, got {_brief(value)}",
                    f"list candidate locations in order of preference, e.g. {key}: "
                    f"[{', '.join(names[:2]) or 'here'}]",
                )
                continue
            items = [(value, kline)] if isinstance(value, str) else None
            if isinstance(value, CommentedSeq):
                items = [(v, _item_line(value, i, kline)) for i, v in enumerate(value)]
            if items is None:
                self.add(
                    kline,
                    path,
                    f"expected a location name or a list of names, got {_brief(value)}",
                    f"write e.g. {key}: [{', '.join(names[:2]) or 'here'}]",
                )
                continue
            candidates: list[str] = []
            ok = True
            for i, (item, iline) in enumerate(items):
                ipath = f"{path}[{i}]" if isinstance(value, CommentedSeq) else path
                if not isinstance(item, str):
                    self.add(
                        iline,
                        ipath,
                        f"expected a location name, got {_brief(_plain(item))}",
                        f"use one of the declared locations: {', '.join(names) or 'none'}",
                    )
                    ok = False
                elif item not in declared:
                    self.add(
                        iline,
                        ipath,
                        f"unknown location {item!r} (declared: {', '.join(names) or 'none'})",
                        _guess(
                            item, names, f"declare {item} under locations, or use a declared one"
                        ),
                    )
                    ok = False
                elif item in candidates:
                    self.add(
                        iline,
                        ipath,
                        f"location {item!r} is listed twice",
                        "list each candidate location once, in order of preference",
                    )
                    ok = False
                else:
                    candidates.append(item)
            if ok:
                bindings[key] = candidates
                lines[key] = kline
        for key, hints in list(options["expected_seconds"].items()):
            options["expected_seconds"][key] = self.hints_for(
                node, key, hints, bindings.get(key, [])
            )
        return bindings, lines, options

    def hints_for(
        self, node: CommentedMap, key: str, hints: Any, candidates: list[str]
    ) -> dict[str, float]:
        """``expected_seconds`` of a binding: one number for every candidate, or a mapping
        of some candidates to numbers."""
        line = _key_line(node[key], "expected_seconds", _key_line(node, key, 1))
        path = f"bindings.{key}.expected_seconds"
        fix = "give seconds >= 0, e.g. expected_seconds: 30 or {qpu: 5, local: 40}"
        if isinstance(hints, int | float) and not isinstance(hints, bool) and hints >= 0:
            return dict.fromkeys(candidates, float(hints))
        if not isinstance(hints, Mapping):
            self.add(line, path, f"expected a number or a mapping, got {_brief(hints)}", fix)
            return {}
        result: dict[str, float] = {}
        for location, seconds in hints.items():
            if location not in candidates:
                listed = ", ".join(candidates) or "its locations"
                fix_name = _guess(str(location), candidates, f"name one of {listed}")
                self.add(line, f"{path}.{location}",
                         f"{location!r} is not a candidate of this binding", fix_name)  # fmt: skip
            elif isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds < 0:
                self.add(line, f"{path}.{location}",
                         f"expected seconds >= 0, got {_brief(seconds)}", fix)  # fmt: skip
            else:
                result[location] = float(seconds)
        return result

    def binding_mapping(
        self, node: CommentedMap, path: str, line: int
    ) -> tuple[Any, dict[str, Any]]:
        """The locations and the options of a binding written as a mapping."""
        keys = ("locations", *BINDING_OPTIONS)
        for key in node:
            if key not in keys:
                self.unknown_key(node, key, path, keys)
        if node.get("locations") is None:
            self.add(line, path, "a binding written as a mapping needs `locations`",
                     "write e.g. {locations: [compute], allocation: held}")  # fmt: skip
        allocation = node.get("allocation")
        if allocation is not None and allocation not in SUPPORTED_ALLOCATIONS:
            self.add(
                _key_line(node, "allocation", line),
                f"{path}.allocation",
                f"unknown allocation strategy {_brief(allocation)}",
                _guess(
                    str(allocation),
                    SUPPORTED_ALLOCATIONS,
                    f"use one of {', '.join(SUPPORTED_ALLOCATIONS)}",
                ),  # fmt: skip
            )
            allocation = None
        placement = node.get("placement")
        if placement is not None and placement not in PLACEMENT_RULES:
            self.add(
                _key_line(node, "placement", line),
                f"{path}.placement",
                f"unknown placement rule {_brief(placement)}",
                _guess(str(placement), PLACEMENT_RULES, f"use one of {', '.join(PLACEMENT_RULES)}"),
            )
            placement = None
        chosen = {"allocation": allocation, "placement": placement,
                  "expected_seconds": _plain(node.get("expected_seconds"))}  # fmt: skip
        return node.get("locations"), {k: v for k, v in chosen.items() if v is not None}

    def allocation_problems(
        self,
        data: CommentedMap,
        locations: dict[str, LocationConfig],
        policy: Policy,
        bindings: dict[str, list[str]],
        binding_allocations: dict[str, str],
    ) -> None:
        """Strategies (policy, bindings) that a location they reach cannot use."""
        node = data.get("policy")
        line = _key_line(data, "policy", 1)
        if isinstance(node, CommentedMap):
            line = _key_line(node, "allocation", line)
        for name, config in locations.items():
            strategy = getattr(config, "allocation", None) or policy.allocation
            problem = config.allocation_problem(strategy)
            if problem is not None and strategy == policy.allocation:
                self.add(line, "policy.allocation", f"location {name}: {problem[0]}", problem[1])
        for key, strategy in binding_allocations.items():  # only parsed from a mapping
            kline = _key_line(data["bindings"], key, 1)
            for name in bindings.get(key, []):
                problem = locations[name].allocation_problem(strategy)
                if problem is not None:
                    self.add(kline, f"bindings.{key}.allocation",
                             f"location {name}: {problem[0]}", problem[1])  # fmt: skip

    def policy(self, data: CommentedMap) -> Policy:
        if "policy" not in data:
            return Policy()
        node = data["policy"]
        line = _key_line(data, "policy", 1)
        if node is None:
            return Policy()
        if not isinstance(node, CommentedMap):
            self.add(
                line,
                "policy",
                f"expected a mapping, got {_brief(node)}",
                "write e.g. `policy: {allocation: per-step}`",
            )
            return Policy()
        return self.validate(Policy, node, "policy", line) or Policy()


def _pydantic_problem(
    model: type[BaseModel], node: CommentedMap, prefix: str, line: int, error: Mapping[str, Any]
) -> tuple[int, str, str, str]:
    """Turn one pydantic error into (line, key path, what is wrong, fix)."""
    loc: tuple[Any, ...] = tuple(error["loc"])
    # Follow loc through the YAML as far as it goes: the deepest key present gives the line.
    current: Any = node
    present: list[Any] = []
    for part in loc:
        if isinstance(current, CommentedMap) and part in current:
            line = _key_line(current, part, line)
        elif isinstance(current, CommentedSeq) and isinstance(part, int) and part < len(current):
            line = _item_line(current, part, line)
        else:
            break
        present.append(part)
        current = current[part]
    kind = error["type"]
    if kind == "missing":
        key_path = _join(prefix, *present, loc[len(present)])
    else:
        key_path = _join(prefix, *present)
    key = str(loc[-1]) if loc else prefix
    parent = _join(prefix, *loc[:-1])
    info, annotation = _field_at(model, loc)
    hint = f" ({_sentence(info.description)})" if info is not None and info.description else ""
    if kind == "extra_forbidden":
        allowed = list(_fields_at(model, loc[:-1]))
        return (
            line,
            key_path,
            "unknown key",
            _guess(key, allowed, f"remove it; allowed keys: {', '.join(allowed)}"),
        )
    example = _yaml_scalar(_example(info, annotation, key))
    if kind == "missing":
        what = "required key is missing"
        return line, key_path, what, f"add `{key}: {example}` to {parent}{hint}"
    got = _brief(error.get("input"))
    if _SECRET_KEY.search(key) or _strip(annotation) in (SecretStr, SecretBytes):
        got = "a value not shown here (the key holds a secret)"
    if kind in ("value_error", "assertion_error"):
        text = str(error.get("ctx", {}).get("error", error["msg"]))
        what, _, fix = text.partition(" Fix: ")
        what = what.rstrip(".")
        return line, key_path, what, fix or f"correct {key}{hint}"
    expected = _describe(info, annotation) if annotation is not None else None
    if expected is None:
        return (
            line,
            key_path,
            f"{error['msg'][:1].lower()}{error['msg'][1:]}, got {got}",
            f"correct {key}{hint}",
        )
    if loc and isinstance(loc[-1], int):  # a list item: name it by its place in the list
        fix = f"make {_join(*loc)} {expected}{hint}, e.g. {example}"
    else:
        fix = f"set {key} to {expected}{hint}, e.g. {key}: {example}"
    choices = _choices(annotation)
    if choices and isinstance(error.get("input"), str):
        fix = _guess(error["input"], choices, fix)
    return line, key_path, f"expected {expected}, got {got}", fix


# --- pydantic model introspection -------------------------------------------------------------


def _fields_at(model: type[BaseModel], loc: Sequence[Any]) -> dict[str, FieldInfo]:
    """The fields of the (nested) model that ``loc`` points into."""
    current: Any = model
    for part in loc:
        _, annotation = _field_at(current, (part,))
        current = _strip(annotation)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return dict(current.model_fields)
    return {}


def _field_at(model: type[BaseModel], loc: Sequence[Any]) -> tuple[FieldInfo | None, Any]:
    """The field and the annotation that ``loc`` ends on, as far as it can be followed."""
    info: FieldInfo | None = None
    annotation: Any = model
    for part in loc:
        target = _strip(annotation)
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


def _strip(annotation: Any) -> Any:
    """Drop Annotated wrappers and ``None`` from unions (optional keys may simply be left out)."""
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(members) == 1:
            return _strip(members[0])
    return annotation


def _constraints(info: FieldInfo | None, annotation: Any) -> list[Any]:
    metadata = list(info.metadata) if info is not None else []
    while typing.get_origin(annotation) is typing.Annotated:
        annotation, *extra = typing.get_args(annotation)
        metadata.extend(extra)
    return metadata


def _describe(info: FieldInfo | None, annotation: Any = PydanticUndefined) -> str:
    """'an integer >= 1', 'one of: per-step, held', 'a list of strings', ..."""
    if annotation is PydanticUndefined:
        annotation = info.annotation if info is not None else Any
    text = _type_phrase(_strip(annotation))
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
    annotation = _strip(annotation)
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation in _PHRASES:
        return _PHRASES[annotation][plural]
    choices = _choices(annotation)
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


def _choices(annotation: Any) -> list[str]:
    annotation = _strip(annotation)
    if typing.get_origin(annotation) is Literal:
        return [str(a) for a in typing.get_args(annotation)]
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return [str(m.value) for m in annotation]
    return []


def _default(info: FieldInfo) -> Any:
    if info.default_factory is not None:
        try:
            return info.default_factory()  # type: ignore[call-arg]
        except TypeError:  # a factory that needs the other fields' values
            return None
    return None if info.default is PydanticUndefined else info.default


def _example(info: FieldInfo | None, annotation: Any, key: str) -> Any:
    """A value that would be accepted, for the 'e.g.' of a fix."""
    if info is not None and not info.is_required():
        default = _default(info)
        if default not in (None, [], {}, ""):
            return default
    for meta in _constraints(info, annotation):
        if getattr(meta, "ge", None) is not None:
            return meta.ge
        if getattr(meta, "gt", None) is not None:
            return meta.gt + 1
    base = _strip(annotation)
    choices = _choices(base)
    if choices:
        return choices[0]
    return {bool: True, int: 1, float: 1.0}.get(base, f"<{key}>")


def _yaml_scalar(value: Any) -> str:
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_yaml_scalar(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_yaml_scalar(v)}" for k, v in value.items()) + "}"
    return str(value)


def _sentence(description: str) -> str:
    """The first sentence of a field description, as a lower-case clause."""
    first = " ".join(description.split()).split(". ")[0].rstrip(".")
    if len(first) > 1 and first[1].islower():
        first = first[0].lower() + first[1:]
    return first


# --- YAML helpers -----------------------------------------------------------------------------


def _yaml_error_message(exc: YAMLError, source: str) -> str:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    context = getattr(exc, "context", None)
    if mark is None:
        return f"{source}: YAML syntax error: {problem}. Fix: correct the YAML syntax"
    line, column = mark.line + 1, mark.column + 1
    what = f"{problem} ({context})" if context else problem
    fix = "correct the YAML syntax there (indent with spaces, quote values containing ': ')"
    if "duplicate key" in problem:
        fix = "keep only one of the duplicate keys"
    return f"{source}:{line}:{column}: YAML syntax error: {what}. Fix: {fix}"


def _encoding_error_message(raw: bytes, exc: UnicodeDecodeError, source: str) -> str:
    """Where the first byte that is not UTF-8 is, so the file can be fixed in an editor."""
    line_start = raw.rfind(b"\n", 0, exc.start) + 1
    line = raw.count(b"\n", 0, exc.start) + 1
    column = len(raw[line_start : exc.start].decode("utf-8")) + 1  # valid up to exc.start
    return (
        f"{source}:{line}:{column}: byte 0x{raw[exc.start]:02x} is not UTF-8 text. "
        "Fix: save the file as UTF-8 (or remove the character there)"
    )


def _node_line(node: Any) -> int:
    lc = getattr(node, "lc", None)
    return lc.line + 1 if lc is not None and lc.line is not None else 1


def _key_line(node: Any, key: Any, fallback: int) -> int:
    """1-based line of ``key`` in a mapping; keys pulled in by a ``<<:`` merge use ``fallback``."""
    try:
        return node.lc.key(key)[0] + 1
    except (AttributeError, KeyError, TypeError):
        return fallback


def _item_line(node: CommentedSeq, index: int, fallback: int) -> int:
    try:
        return node.lc.item(index)[0] + 1
    except (AttributeError, KeyError, TypeError, IndexError):
        return fallback


def _plain(value: Any) -> Any:
    """ruamel's round-trip nodes as plain dict/list/int/float/str, for pydantic."""
    if isinstance(value, TaggedScalar):
        return value.value
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, bool) or value is None:
        return value
    for kind in (int, float, str):
        if isinstance(value, kind):
            return kind(value)
    return value


def _brief(value: Any) -> str:
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
    return repr(_plain(value))


def _join(*parts: Any) -> str:
    out = ""
    for part in parts:
        if isinstance(part, int) and not isinstance(part, bool):
            out += f"[{part}]"
        elif part != "":
            out += f".{part}" if out else str(part)
    return out


def _guess(word: str, choices: Iterable[Any], otherwise: str) -> str:
    """A fix that starts with the closest valid choice, when one is close enough."""
    close = difflib.get_close_matches(word, [str(c) for c in choices], n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}? Otherwise {otherwise}" if close else otherwise


def _listing(paths: Iterable[str], limit: int = 8) -> str:
    """' (steps: /a, /b, ...)' for a fix that found no close match."""
    items = list(paths)
    shown = ", ".join(items[:limit]) + (", ..." if len(items) > limit else "")
    return f" (steps: {shown})" if items else ""


def _minimal_fix() -> str:
    return "start from `version: 1` and `locations: {here: {connector: local}}`"
