"""Load a recipe: YAML file + dotted command-line overrides -> validated :class:`Recipe`.

Validation errors become one line each, naming the source (file or command
line), the dotted key, and either the nearest valid key or the expected type,
because a typo in a recipe should cost seconds, not a stack trace.
"""

from __future__ import annotations

import difflib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from mmtune.config.schema import TASK_RECIPES, DatasetCard, Recipe
from mmtune.errors import ConfigError

M = TypeVar("M", bound=BaseModel)

_TYPE_WORDS = {
    "int_parsing": "expected an integer",
    "int_type": "expected an integer",
    "int_from_float": "expected an integer",
    "float_parsing": "expected a number",
    "float_type": "expected a number",
    "bool_parsing": "expected true or false",
    "bool_type": "expected true or false",
    "string_type": "expected a string",
    "list_type": "expected a list",
    "dict_type": "expected a mapping",
    "model_type": "expected a mapping",
    "model_attributes_type": "expected a mapping",
    "tuple_type": "expected a list of two numbers",
}


def load_recipe(path: str | Path | None = None, overrides: list[str] | None = None) -> Recipe:
    """Read ``path`` (optional), apply ``key.sub=value`` overrides, validate."""
    raw, source, override_keys = read_with_overrides(path, overrides)
    if "stages" in raw:
        raise ConfigError(f"{source}: a multi-stage recipe (it has 'stages'): run it with `mmtune train {source}` or "
                          "mmtune.sequential.run_stages(mmtune.config.stages.load_stages(path))")
    return validate_recipe(raw, source=source, override_keys=override_keys)


def read_with_overrides(path: str | Path | None, overrides: list[str] | None) -> tuple[dict[str, Any], str, list[str]]:
    """The raw mapping of ``path`` (optional) with ``key.sub=value`` overrides applied, its source name, and the
    overridden keys (errors at them name the command line)."""
    raw: dict[str, Any] = {}
    source = "recipe"
    if path is not None:
        source = str(path)
        raw = read_yaml_mapping(Path(path))
    for item in overrides or []:
        apply_override(raw, item)
    return raw, source, [item.partition("=")[0].strip() for item in overrides or []]


def read_yaml_mapping(path: Path, what: str = "recipe") -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{path}: {what} file not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a {what} must be a mapping of keys, got {type(raw).__name__}")
    return raw


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Apply ``a.b.c=value`` in place; the value is parsed as YAML (so 3, true, [a, b] work)."""
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"command line: override '{item}' is not of the form key.sub=value")
    parts = key.strip().split(".")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        value = text
    node: Any = raw
    for i, part in enumerate(parts[:-1]):
        nxt = parts[i + 1]
        if not isinstance(node, (dict, list)):
            raise ConfigError(f"command line: '{key}' goes inside a value that is not a mapping")
        if isinstance(node, list):
            if part.isdigit() and int(part) == len(node):
                node.append([] if nxt.isdigit() else {})
            node = node[_list_index(node, part, key)]
            continue
        if part not in node or node[part] is None:
            node[part] = [] if nxt.isdigit() else {}
        node = node[part]
    last = parts[-1]
    if isinstance(node, list):
        idx = int(last)
        if idx == len(node):
            node.append(value)
        else:
            node[_list_index(node, last, key)] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise ConfigError(f"command line: '{key}' goes inside a value that is not a mapping")


def _list_index(node: list, part: str, key: str) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise ConfigError(f"command line: '{key}': index {part} is outside the list (length {len(node)})")
    return int(part)


def validate_recipe(raw: dict[str, Any], *, source: str = "recipe", override_keys: list[str] | None = None) -> Recipe:
    """Validate a raw mapping as the recipe of its ``task``; errors at keys set on the command line name it."""
    task = raw.get("task", Recipe.model_fields["task"].default)  # a recipe without `task:` is SFT
    recipe_class = TASK_RECIPES.get(task) if isinstance(task, str) else None
    if recipe_class is None:
        raise ConfigError(f"{source}: task: unknown task {task!r} (valid: {', '.join(TASK_RECIPES)})")
    return validate_as(recipe_class, raw, source=source, override_keys=override_keys)


def load_card(path: Path) -> DatasetCard:
    """A dataset card file, validated by the schema (errors name the card file and the key)."""
    return validate_as(DatasetCard, read_yaml_mapping(path, what="dataset card"), source=str(path))


def validate_as(model: type[M], raw: dict[str, Any], *, source: str, override_keys: list[str] | None = None) -> M:
    """``model.model_validate(raw)`` with every error as one line naming ``source`` (or the command line)."""
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            dotted = ".".join(str(p) for p in err["loc"])
            from_cli = any(dotted == k or dotted.startswith(k + ".") for k in override_keys or [])
            lines.append(_describe(err, "command line" if from_cli else source, model))
        raise ConfigError("\n".join(lines)) from None


def _describe(err: dict[str, Any], source: str, root: type[BaseModel]) -> str:
    loc = [p for p in err["loc"]]
    dotted = ".".join(str(p) for p in loc)
    kind = err["type"]
    if kind == "extra_forbidden":
        valid = _field_names_at(root, loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]), valid, n=1, cutoff=0.5)
        hint = f" (did you mean '{_join(loc[:-1], close[0])}'?)" if close else f" (valid keys here: {', '.join(valid)})"
        return f"{source}: unknown key '{dotted}'{hint}"
    got = err.get("input")
    got_text = f", got {got!r}" if not isinstance(got, (dict, list)) else ""
    if kind in _TYPE_WORDS:
        return f"{source}: {dotted}: {_TYPE_WORDS[kind]}{got_text}"
    if kind == "literal_error":
        expected = err.get("ctx", {}).get("expected", "")
        return f"{source}: {dotted}: expected one of {expected}{got_text}"
    msg = err["msg"].removeprefix("Value error, ")
    where = f"{dotted}: " if dotted else ""
    return f"{source}: {where}{msg}{got_text if kind != 'value_error' else ''}"


def _join(prefix: list, name: str) -> str:
    return ".".join([str(p) for p in prefix] + [name])


def _field_names_at(root: type[BaseModel], loc: list) -> list[str]:
    """Valid key names of the schema node that ``loc`` points to (list indices and mapping keys are stepped over)."""
    model: type[BaseModel] | None = root
    keyed = False  # the previous part was a mapping field: this part is one of its keys
    for part in loc:
        if model is None:
            return []
        if isinstance(part, int) or keyed:
            keyed = False
            continue
        field = model.model_fields.get(str(part))
        model = _model_in(field.annotation) if field else None
        keyed = field is not None and typing.get_origin(field.annotation) is dict
    return sorted(model.model_fields) if model and not keyed else []


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if isinstance(annotation, (types.UnionType, typing._GenericAlias)) or typing.get_origin(annotation):
        for arg in typing.get_args(annotation):
            found = _model_in(arg)
            if found is not None:
                return found
    return None


def dump_recipe(recipe: Recipe) -> str:
    """The fully resolved recipe as YAML (what a run writes to ``config.yaml``).

    Dataset entries keep only the keys they set: what they leave unset comes from their card, also when
    the run's ``config.yaml`` is read again.
    """
    data = recipe.model_dump(mode="json")
    entries = getattr(getattr(recipe, "data", None), "datasets", None)
    if entries:
        data["data"]["datasets"] = [spec.model_dump(mode="json", exclude_unset=True) for spec in entries]
    return yaml.safe_dump(data, sort_keys=False)
