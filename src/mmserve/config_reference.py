"""The configuration reference (docs/configuration.md), built from the config schema itself.

    .venv/bin/python -m mmserve.config_reference > docs/configuration.md

Every table row comes from a pydantic field of `Settings`, `ModelSpec` or `ApiKey`: its name,
type, default, constraints and description. A test fails when the file and `render()` differ.
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import annotated_types
from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from mmserve.config import (
    _ENV_FIELDS,
    DEFAULT_MODELS,
    DEVICE_PATTERN,
    ENV_PREFIX,
    ApiKey,
    ClusterSpec,
    ModelSpec,
    RayResources,
    Settings,
)
from mmserve.registry import backends_of, default_backend

__all__ = ["SECTIONS", "main", "render"]

COMMAND = ".venv/bin/python -m mmserve.config_reference > docs/configuration.md"

# (heading, the key the entries sit under or None for the top level, the schema)
SECTIONS: tuple[tuple[str, str | None, type[BaseModel]], ...] = (
    ("Server settings", None, Settings),
    ("Models", "models", ModelSpec),
    ("API keys", "api_keys", ApiKey),
    ("Cluster", "cluster", ClusterSpec),
    ("Ray resources", "resources", RayResources),
)
# Sections of one mapping (not a list of entries), and where it sits.
MAPPINGS = {"cluster": "the top-level key `cluster:`", "resources": "a model's `resources:`"}


def env_var(field: str) -> str:
    """The environment variable that sets a top-level setting."""
    return ENV_PREFIX + field.upper()


def type_name(annotation: object) -> str:
    """A type hint as a reader writes it: `int | None`, `list[str]`, `"llm" | "embedding"`."""
    origin = get_origin(annotation)
    args = get_args(annotation)
    if annotation is type(None):
        return "None"
    if annotation is Any:
        return "Any"
    if origin is Literal:
        return " | ".join(json.dumps(arg) for arg in args)
    if origin is Union or origin is types.UnionType:
        return " | ".join(type_name(arg) for arg in args)
    if origin is not None:
        name = getattr(origin, "__name__", str(origin))
        return f"{name}[{', '.join(type_name(arg) for arg in args)}]"
    if annotation is SecretStr:
        return "str"
    if isinstance(annotation, type) and issubclass(annotation, Path):
        return "path"
    return getattr(annotation, "__name__", str(annotation))


def default_value(field: FieldInfo) -> str:
    """The default as it would be written in the YAML file; `required` when there is none."""
    if field.default_factory is None and field.default is PydanticUndefined:
        return "required"
    value: object = field.get_default(call_default_factory=True)
    return f"`{_yaml(value)}`"


def _yaml(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, Path):
        value = str(value)
    return json.dumps(value, default=str)


def constraints(field: FieldInfo) -> str:
    """Bounds declared on the field (ge, gt, le, lt, min_length, max_length, pattern)."""
    found: list[str] = []
    unit = ("character", "characters") if field.annotation is str else ("entry", "entries")
    for item in field.metadata:
        if isinstance(item, annotated_types.Ge):
            found.append(f">= {_yaml(item.ge)}")
        elif isinstance(item, annotated_types.Gt):
            found.append(f"> {_yaml(item.gt)}")
        elif isinstance(item, annotated_types.Le):
            found.append(f"<= {_yaml(item.le)}")
        elif isinstance(item, annotated_types.Lt):
            found.append(f"< {_yaml(item.lt)}")
        elif isinstance(item, annotated_types.MinLen):
            found.append(f"at least {_count(item.min_length, unit)}")
        elif isinstance(item, annotated_types.MaxLen):
            found.append(f"at most {_count(item.max_length, unit)}")
        elif getattr(item, "pattern", None):
            found.append(f"matches `{item.pattern}`")
    return ", ".join(found)


def _count(number: int | None, unit: tuple[str, str]) -> str:
    return f"{number} {unit[0] if number == 1 else unit[1]}"


def _cell(text: str) -> str:
    """Table cells may not hold a raw `|` or a line break."""
    return " ".join(text.split()).replace("|", "\\|")


def _anchor(heading: str) -> str:
    return "#" + heading.lower().replace(" ", "-")


def _nested(annotation: object) -> type[BaseModel] | None:
    """The section a field's entries are described in (`models: list[ModelSpec]`)."""
    for arg in (annotation, *get_args(annotation)):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return None


def table(schema: type[BaseModel], with_env: bool = False) -> list[str]:
    """One row per field of `schema`, in declaration order."""
    headings = ["Key", "Type", "Default", "Allowed", "Description"]
    if with_env:
        headings.insert(4, "Environment")
    lines = ["| " + " | ".join(headings) + " |", "|" + "---|" * len(headings)]
    sections = {model: heading for heading, _, model in SECTIONS}
    for name, field in schema.model_fields.items():
        description = field.description or ""
        nested = _nested(field.annotation)
        if nested is not None and nested in sections:
            see = f"see [{sections[nested]}]({_anchor(sections[nested])})"
            description = f"{description}; {see}" if description else see
        cells = [
            f"`{name}`",
            f"`{type_name(field.annotation)}`",
            default_value(field),
            constraints(field),
            description,
        ]
        if with_env:
            cells.insert(4, f"`{env_var(name)}`" if name in _ENV_FIELDS else "")
        lines.append("| " + " | ".join(_cell(cell) for cell in cells) + " |")
    return lines


def _intro() -> list[str]:
    env = ", ".join(f"`{env_var(name)}`" for name in _ENV_FIELDS)
    builtin = ", ".join(f"`{model['name']}`" for model in DEFAULT_MODELS)
    return [
        "# Configuration reference",
        "",
        f"<!-- Generated from src/mmserve/config.py by `{COMMAND}`. Do not edit by hand. -->",
        "",
        "Every key is optional unless marked *required*. A commented example:"
        " [config.example.yaml](../config.example.yaml).",
        "",
        "## Where settings come from",
        "",
        "Each layer overrides the one before it:",
        "",
        "1. the built-in defaults (the *Default* column below);",
        f"2. the YAML file: `mmserve serve --config FILE`, else the file `{env_var('config')}`"
        f" names; with no file, the built-in models are served ({builtin});",
        f"3. environment variables, for these server settings only: {env};",
        "4. the flags of `mmserve serve` (`mmserve serve --help`).",
        "",
        "The whole configuration is checked at start-up: an unknown key (in any section), a value"
        " of the wrong type or out of bounds, or a missing file stops the server with a message"
        " that names the file and the key. Relative paths in the file (`source`, `model_dirs`)"
        " are relative to the file. Types are written as Python type hints: `None` is YAML's"
        " `null`, or leaving the key out.",
        "",
    ]


def _backends_line() -> str:
    """Each kind's backends, as `mmserve.registry` declares them, the default first."""
    kinds = ("llm", "embedding", "vision", "http", "subprocess")
    parts = []
    for kind in kinds:
        default = default_backend(kind)
        names = [f"`{b}`" + (" (default)" if b == default else "") for b in backends_of(kind)]
        parts.append(f"{kind}: {', '.join(names)}")
    return (
        f"- `backend`, by kind: {'; '.join(parts)}. A backend whose packages are not installed"
        " is refused, naming the extra to install."
    )


def _section_intro(key: str | None, schema: type[BaseModel]) -> list[str]:
    doc = " ".join((schema.__doc__ or "").split())  # a docstring's lines as one paragraph
    if key is None:
        return [f"{doc} Top-level keys of the file.", ""]
    if key in MAPPINGS:
        lines = [f"{doc} The keys of {MAPPINGS[key]} (see [cluster.md](cluster.md))."]
        return [*lines, ""]
    lines = [f"{doc} Each entry of `{key}:` takes these keys."]
    if schema is ModelSpec:
        lines += ["", _backends_line()]
        lines += [
            f"- Each entry of `devices` matches `{DEVICE_PATTERN}`: one replica (one process) per"
            " entry. `replicas: N` stands for N `cpu` entries; given both, they must agree.",
            "- `source` is checked at start-up: a `catalog:NAME` needs its PyPI package installed,"
            " a path must exist.",
            "- `name` and `aliases` are letters, digits and `. _ : -`; every name and alias is"
            " unique across all models.",
        ]
    if schema is ApiKey:
        lines += [
            "",
            "An entry may also be a bare string (a key with every scope), or give"
            " `key_env: VARIABLE` instead of `key` to read the key from the environment"
            " (start-up fails if the variable is not set).",
        ]
    return [*lines, ""]


def render() -> str:
    """The Markdown reference of every configuration key."""
    lines = _intro()
    for heading, key, schema in SECTIONS:
        lines += [f"## {heading}", "", *_section_intro(key, schema)]
        lines += table(schema, with_env=key is None)
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    sys.stdout.buffer.write(render().encode())


if __name__ == "__main__":
    main()
