"""One pass over a deployment's YAML tree that collects every problem with its line.

The top level, ``version``, ``locations`` (each validated by its connector's config model)
and ``policy`` are checked here; ``bindings`` by :mod:`qflow.deployment.bindings_parser`.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import ValidationError
from ruamel.yaml.comments import CommentedMap

from qflow.connector import LocationConfig
from qflow.deployment.bindings_parser import parse_bindings
from qflow.deployment.messages import pydantic_problem
from qflow.deployment.model import (
    SCHEMA_VERSION,
    TOP_LEVEL_KEYS,
    Deployment,
    Policy,
)
from qflow.deployment.problems import ProblemCollector
from qflow.deployment.suggestions import guess
from qflow.deployment.yaml_nodes import brief, join_path, key_line, node_line, plain
from qflow.registry import UnknownConnectorError, connector_class, registry

_LOCATION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


class DeploymentParser(ProblemCollector):
    """Turns the YAML tree into a :class:`Deployment`, or raises every problem found."""

    def parse(self, data: Any) -> Deployment:
        if data is None:
            self.add(1, "", "the deployment is empty", minimal_fix())
            self.fail()
        if not isinstance(data, CommentedMap):
            self.add(
                node_line(data),
                "",
                f"the deployment must be a mapping of {', '.join(TOP_LEVEL_KEYS)}, "
                f"got {brief(data)}",
                minimal_fix(),
            )
            self.fail()
        for key in data:
            if key not in TOP_LEVEL_KEYS:
                self.unknown_key(data, key, "", TOP_LEVEL_KEYS)
        version = self.version(data)
        locations = self.locations(data)
        declared = data["locations"] if isinstance(data.get("locations"), CommentedMap) else {}
        bindings, binding_lines, options = parse_bindings(self, data, list(declared))
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
            bindings_line=key_line(data, "bindings", 1),
        )

    def version(self, data: CommentedMap) -> int:
        if "version" not in data:
            self.add(
                node_line(data),
                "version",
                "required key is missing",
                "add `version: 1` as the first line",
            )
            return SCHEMA_VERSION
        value = plain(data["version"])
        if isinstance(value, bool) or value != SCHEMA_VERSION or not isinstance(value, int):
            self.add(
                key_line(data, "version", 1),
                "version",
                f"this qflow reads deployment schema version {SCHEMA_VERSION}, got {brief(value)}",
                f"set version: {SCHEMA_VERSION} (and write the file for that schema)",
            )
        return SCHEMA_VERSION

    def locations(self, data: CommentedMap) -> dict[str, LocationConfig]:
        node = data.get("locations")
        line = key_line(data, "locations", node_line(data))
        example = "locations: {here: {connector: local}}"
        if "locations" not in data:
            self.add(node_line(data), "locations", "required key is missing", f"add {example}")
            return {}
        if not isinstance(node, CommentedMap) or not node:
            self.add(
                line,
                "locations",
                f"expected a non-empty mapping of location names, got {brief(node)}",
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
        line = key_line(parent, name, node_line(parent))
        path = join_path("locations", str(name))
        if not isinstance(name, str) or not _LOCATION_NAME.fullmatch(name):
            self.add(
                line,
                path,
                f"invalid location name {brief(name)}",
                "name locations with letters, digits, '_', '.' or '-' (e.g. compute)",
            )
            return None
        if not isinstance(cfg, CommentedMap):
            self.add(
                line,
                path,
                f"expected a mapping with at least a connector key, got {brief(cfg)}",
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
        connector = plain(cfg["connector"])
        cline = key_line(cfg, "connector", line)
        if not isinstance(connector, str):
            self.add(
                cline,
                f"{path}.connector",
                f"expected a connector name, got {brief(connector)}",
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
                guess(
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
            return model.model_validate(plain(node))
        except ValidationError as exc:
            seen: set[str] = set()
            for error in exc.errors():
                line_no, key_path, what, fix = pydantic_problem(model, node, path, line, error)
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
        line = key_line(data, "policy", 1)
        if isinstance(node, CommentedMap):
            line = key_line(node, "allocation", line)
        for name, config in locations.items():
            strategy = getattr(config, "allocation", None) or policy.allocation
            problem = config.allocation_problem(strategy)
            if problem is not None and strategy == policy.allocation:
                self.add(line, "policy.allocation", f"location {name}: {problem[0]}", problem[1])
        for key, strategy in binding_allocations.items():  # only parsed from a mapping
            kline = key_line(data["bindings"], key, 1)
            for name in bindings.get(key, []):
                problem = locations[name].allocation_problem(strategy)
                if problem is not None:
                    self.add(kline, f"bindings.{key}.allocation",
                             f"location {name}: {problem[0]}", problem[1])  # fmt: skip

    def policy(self, data: CommentedMap) -> Policy:
        if "policy" not in data:
            return Policy()
        node = data["policy"]
        line = key_line(data, "policy", 1)
        if node is None:
            return Policy()
        if not isinstance(node, CommentedMap):
            self.add(
                line,
                "policy",
                f"expected a mapping, got {brief(node)}",
                "write e.g. `policy: {allocation: per-step}`",
            )
            return Policy()
        return self.validate(Policy, node, "policy", line) or Policy()


def minimal_fix() -> str:
    return "start from `version: 1` and `locations: {here: {connector: local}}`"
