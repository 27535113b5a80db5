"""The Markdown reference of a config model's keys, generated so it never drifts."""

from __future__ import annotations

from collections.abc import Collection

from pydantic import BaseModel

from qflow.connector import LocationConfig
from qflow.deployment.field_text import default_value, describe, yaml_scalar


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
        default = "required" if info.is_required() else f"`{yaml_scalar(default_value(info))}`"
        description = " ".join((info.description or "").split()).replace("|", "\\|")
        rows.append(f"| `{name}` | {describe(info)} | {default} | {description} |")
    return "\n".join(rows) + "\n"
