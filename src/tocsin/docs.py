"""The config reference in README.md, generated from the config models so that it cannot drift.

`config_reference()` walks `tocsin.config.Config`: every nested model, list of models and
`type`-tagged union (a device's `probe`, a credential check's `auth`) becomes a markdown table
of key path, type, default (as TOML spells it) and description. The descriptions are the
docstrings under the fields (the models set `use_attribute_docstrings`).

    python -m tocsin.docs                    print the reference
    python -m tocsin.docs --write README.md  replace the block between the markers in README.md
"""

from __future__ import annotations

import argparse
import inspect
import json
import re
import sys
import types
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from tocsin.config import Config
from tocsin.durations import format_duration

START = "<!-- config-reference:start -->"
END = "<!-- config-reference:end -->"
REGENERATE = ".venv/bin/python -m tocsin.docs --write README.md"

_SCALARS = {str: "string", int: "integer", float: "number", bool: "boolean", timedelta: "duration"}
_NOUNS = re.compile(r"\b(string|integer|number|boolean|duration|table)\b")


@dataclass(frozen=True)
class Section:
    """One table of the reference: a model at a key path (`devices[].probe`), and for a member
    of a tagged union, its tag (`http`)."""

    path: str
    model: type[BaseModel]
    tag: str | None = None
    depth: int = 0

    @property
    def title(self) -> str:
        return f"`{self.path}`" + (f' (type = "{self.tag}")' if self.tag else "")


def sections(model: type[BaseModel] = Config) -> Iterator[Section]:
    """Every model under `model` (not itself), depth first, in field order."""
    yield from _children(model, "", None, 0)


def config_models() -> list[type[BaseModel]]:
    """Config and every model the config file can reach."""
    return [Config, *(s.model for s in sections())]


def _children(model: type[BaseModel], path: str, tag: str | None, depth: int) -> Iterator[Section]:
    for name in _field_order(model):
        field = model.model_fields[name]
        where = f"{path}.{name}" if path else name
        container, members = _models_in(field.annotation)
        if not members:
            continue
        where += "[]" if container == "list" else ""
        tagged = len(members) > 1
        for member in members:
            member_tag = _tag_of(member) if tagged else tag
            yield Section(where, member, member_tag, depth)
            yield from _children(member, where, member_tag, depth + 1)


def _field_order(model: type[BaseModel]) -> list[str]:
    """The model's own fields first, then inherited ones (a device's window overrides last)."""
    own = set(inspect.get_annotations(model))
    names = list(model.model_fields)
    return [n for n in names if n in own] + [n for n in names if n not in own]


def _unwrap(annotation: Any) -> tuple[Any, list[Any]]:
    """The type inside Annotated[...] layers, and their metadata (FieldInfo ones flattened)."""
    metadata: list[Any] = []
    while get_origin(annotation) is Annotated:
        annotation, *extra = get_args(annotation)
        for item in extra:
            metadata.extend(item.metadata if isinstance(item, FieldInfo) else [item])
    return annotation, metadata


def _union_members(annotation: Any) -> list[Any]:
    if get_origin(annotation) in (Union, types.UnionType):
        return [a for a in get_args(annotation) if a is not type(None)]
    return [annotation]


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _models_in(annotation: Any) -> tuple[str | None, list[type[BaseModel]]]:
    """("list" or None, the models) a field holds: a model, an optional one, a list of them, or
    a tagged union of them."""
    base, _ = _unwrap(annotation)
    members = [_unwrap(m)[0] for m in _union_members(base)]
    if len(members) == 1 and get_origin(members[0]) is list:
        inner = [_unwrap(m)[0] for m in _union_members(_unwrap(get_args(members[0])[0])[0])]
        return "list", [m for m in inner if _is_model(m)]
    return None, [m for m in members if _is_model(m)]


def _tag_of(model: type[BaseModel]) -> str:
    literal = _unwrap(model.model_fields["type"].annotation)[0]
    return str(get_args(literal)[0])


# -- cells -------------------------------------------------------------------------------------


def type_text(annotation: Any, metadata: list[Any] | None = None) -> str:
    """A human name for a field's type: string, duration, integer (1-65535), list of strings,
    one of "a" | "b", table."""
    base, inner = _unwrap(annotation)
    constraints = [*(metadata or []), *inner]
    members = _union_members(base)
    if len(members) > 1:
        models = [m for m in (_unwrap(x)[0] for x in members) if _is_model(m)]
        if len(models) == len(members):
            return "table, by type: " + " | ".join(f'"{_tag_of(m)}"' for m in models)
        return _or([type_text(m) for m in members])
    base, more = _unwrap(members[0])
    constraints += more
    origin = get_origin(base)
    if origin is Literal:
        values = [json.dumps(v) for v in get_args(base)]
        return values[0] if len(values) == 1 else "one of " + " | ".join(values)
    if origin is list:
        item = type_text(get_args(base)[0])
        at_least = next(
            (c.min_length for c in constraints if isinstance(c, annotated_types.MinLen)), 0
        )
        text = f"list of {_plural(item)}"
        return text + (f" (at least {at_least})" if at_least else "")
    if origin is dict:
        return f"table of {_plural(type_text(get_args(base)[1]))}"
    if _is_model(base):
        return "table"
    name = _SCALARS.get(base, getattr(base, "__name__", str(base)))
    return name + _range(constraints) if name in ("integer", "number") else name


def _plural(text: str) -> str:
    """ "integer (1-5)" -> "integers (1-5)"; "one of ..." -> "any of ..." (a list's items)."""
    if text.startswith("one of "):
        return "any of " + text.removeprefix("one of ")
    if text.startswith('"'):
        return text
    return _NOUNS.sub(lambda m: m.group(1) + "s", text)


def _or(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " or " + items[-1]


def _range(constraints: list[Any]) -> str:
    low = next((c.ge for c in constraints if isinstance(c, annotated_types.Ge)), None)
    high = next((c.le for c in constraints if isinstance(c, annotated_types.Le)), None)
    if low is not None and high is not None:
        return f" ({low}-{high})"
    if low is not None:
        return f" (at least {low})"
    if high is not None:
        return f" (at most {high})"
    return ""


def toml_value(value: Any) -> str:
    """A value as TOML spells it (durations as "2m"; a model as an inline table)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, timedelta):
        return json.dumps(format_duration(value))
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, BaseModel):
        value = {k: v for k, v in value if v is not None}
    if isinstance(value, dict):
        if not value:
            return "{}"
        return (
            "{ " + ", ".join(f"{_toml_key(k)} = {toml_value(v)}" for k, v in value.items()) + " }"
        )
    raise TypeError(f"no TOML spelling for {value!r}")


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def default_text(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    if value is None:
        return "unset"
    if _models_in(field.annotation)[1] and isinstance(value, BaseModel):
        return "(see below)"
    return f"`{toml_value(value)}`"


def one_line(text: str | None) -> str:
    return " ".join((text or "").split())


def _cell(text: str) -> str:
    """Table-cell safe markdown: pipes escaped; < and > escaped outside code spans."""
    parts = text.split("`")
    for i in range(0, len(parts), 2):
        parts[i] = parts[i].replace("<", "&lt;").replace(">", "&gt;")
    return "`".join(parts).replace("|", "\\|")


def _paragraphs(text: str | None) -> list[str]:
    return [one_line(p) for p in re.split(r"\n\s*\n", text or "") if p.strip()]


# -- the reference -----------------------------------------------------------------------------


def _table(model: type[BaseModel], path: str) -> list[str]:
    lines = ["| key | type | default | description |", "|---|---|---|---|"]
    for name in _field_order(model):
        field = model.model_fields[name]
        key = f"{path}.{name}" if path else name
        container, members = _models_in(field.annotation)
        if members:
            key += "[]" if container == "list" else ""
        cells = [
            f"`{key}`",
            type_text(field.annotation, field.metadata),
            default_text(field),
            one_line(field.description),
        ]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return lines


def config_reference() -> str:
    """The reference, as markdown (what README.md holds between the config-reference markers)."""
    lines = [
        "Generated from the config models by `python -m tocsin.docs`; a test keeps it equal to",
        "them. A key path `a[].b` is key `b` of each entry of the array of tables `a` (`[[a]]`",
        "in TOML, or `a = [{ b = ... }]` inline). A table whose `type` picks its keys (a",
        "device's `probe`, a check's `auth`) has one table per type. Durations are strings",
        'such as `"500ms"`, `"90s"`, `"2m"`, `"1h30m"`, `"5d"`; *unset* means the key may be',
        "left out and has no value.",
        "",
        "### Top level",
        "",
        *_table(Config, ""),
    ]
    for section in sections():
        doc = section.model.__dict__.get("__doc__")
        lines += ["", "#" * (3 + min(section.depth, 1)) + " " + section.title, ""]
        lines += [p for paragraph in _paragraphs(doc) for p in (_cell(paragraph), "")]
        lines += _table(section.model, section.path)
    return "\n".join(lines) + "\n"


def replace_block(text: str, reference: str) -> str:
    """`text` with the block between the markers replaced by `reference`."""
    start, end = text.find(START), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"no {START} ... {END} block")
    return text[: start + len(START)] + "\n" + reference + text[end:]


def block_of(text: str) -> str | None:
    """What stands between the markers in `text` (None: no markers)."""
    start, end = text.find(START), text.find(END)
    if start < 0 or end < start:
        return None
    return text[start + len(START) : end].removeprefix("\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tocsin.docs", description=__doc__)
    parser.add_argument(
        "--write", metavar="FILE", type=Path, help="replace the config-reference block in FILE"
    )
    args = parser.parse_args(argv)
    reference = config_reference()
    if args.write is None:
        sys.stdout.write(reference)
        return 0
    text = args.write.read_text(encoding="utf-8")
    try:
        args.write.write_text(replace_block(text, reference), encoding="utf-8")
    except ValueError as exc:
        print(f"{args.write}: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
