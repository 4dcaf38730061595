"""Super-NaturalInstructions task files: one task per JSON file, defined by its instruction.

The layout (Wang et al. 2022, ``tasks/taskNNN_*.json``)::

    {"Definition": ["..."], "Positive Examples": [{"input", "output", "explanation"}, ...],
     "Negative Examples": [...], "Instances": [{"id", "input", "output": ["...", ...]}, ...], ...}

A dataset of format ``sni`` is such a file or a folder of them; each file is one task, named after the
file's stem. The task's *instruction* is its definition, optionally followed by positive examples
(``instruction_examples``, SNI's "pos-k" setting). Where it goes is the dataset's ``instruction_in_prompt``:
before every instance's input (plain instruction tuning), or nowhere, for a model that receives the
instruction another way (``task: hint``: a hypernetwork reads it once and generates adapters).

A folder is split into one source per task file (:func:`task_sources`), so every sample is tagged with its
task (per-task losses, and the hint task's per-task adapters) by the pipeline's multi-task machinery.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from mmtune.data.formats import BadRow, Conversation, Mapping, check_conversation
from mmtune.data.sources import resolve_source
from mmtune.errors import ConfigError, DataError


@dataclass(frozen=True)
class SniTask:
    """One task file: its name, instruction parts and raw instances."""

    name: str
    path: Path
    definition: str
    examples: tuple[tuple[str, str], ...]
    """Positive examples as ``(input, output)``."""
    instances: tuple[dict[str, Any], ...]


def task_files(path: Path) -> list[Path]:
    """The task files of an ``sni`` dataset path: the file itself, or a folder's ``*.json`` in name order."""
    if path.is_dir():
        files = sorted(path.glob("*.json"))
        if not files:
            raise DataError(f"{path}: an sni dataset folder with no task file (*.json)", reason="missing file")
        return files
    if not path.is_file():
        raise DataError(f"{path}: sni task file or folder not found", reason="missing file")
    return [path]


def _text(value: Any, where: str, field: str) -> str:
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        value = value[0]  # SNI keeps definitions and outputs as lists; the first is the canonical one
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{where}: field '{field}' must be a non-empty string (or a list of them)",
                        reason="missing field")
    return value.strip()


def read_task(path: Path, m: Mapping) -> SniTask:
    """Read one task file (``m`` maps the layout's field names); a broken file is one line naming it."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise DataError(f"{path}: not valid UTF-8", reason="invalid UTF-8") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: malformed JSON ({exc.msg} at column {exc.colno})",
                        reason="malformed JSON") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: an sni task file is a JSON object, got {type(data).__name__}", reason="malformed JSON")
    c = m.columns
    definition = _text(data.get(c["definition"]), str(path), c["definition"])
    examples = []
    for i, ex in enumerate(data.get(c["positive_examples"]) or [], start=1):
        where = f"{path}: '{c['positive_examples']}' {i}"
        if not isinstance(ex, dict):
            raise DataError(f"{where}: expected an object with '{c['input']}' and '{c['output']}'", reason="malformed JSON")
        examples.append((_text(ex.get(c["input"]), where, c["input"]), _text(ex.get(c["output"]), where, c["output"])))
    instances = data.get(c["instances"])
    if not isinstance(instances, list):
        raise DataError(f"{path}: field '{c['instances']}' must be a list of instances", reason="missing field")
    return SniTask(path.stem, path, definition, tuple(examples), tuple(instances))


def instruction_text(task: SniTask, examples: int = 0) -> str:
    """The task's instruction: ``Definition: ...`` and its first ``examples`` positive examples (Tk-Instruct's
    wording), what the prompt carries or a hypernetwork reads."""
    parts = [f"Definition: {task.definition}"]
    for i, (x, y) in enumerate(task.examples[:examples], start=1):
        parts.append(f"Positive Example {i} -\nInput: {x}\nOutput: {y}")
    return "\n\n".join(parts)


def instance_prompt(task_input: str, instruction: str | None) -> str:
    """A user turn: the instance's input, after the instruction when it is in the prompt."""
    return f"{instruction}\n\nInput: {task_input}" if instruction else f"Input: {task_input}"


def sni_conversations(path: Path, m: Mapping, *, in_prompt: bool, examples: int,
                      bad) -> Iterator[tuple[str, Conversation]]:
    """``(location, conversation)`` for every instance of every task file under ``path``.

    The assistant turn is the first output; all outputs are its ``references`` (exact match accepts any).
    ``bad(where, reason, detail)`` reports an unusable instance (raises or counts a skip).
    """
    for file in task_files(path):
        task = read_task(file, m)
        instruction = instruction_text(task, examples) if in_prompt else None
        for i, row in enumerate(task.instances, start=1):
            where = f"{file}: instance {i}"
            try:
                if not isinstance(row, dict):
                    raise BadRow("malformed instance", "Instances", f"expected an object, got {type(row).__name__}")
                x = row.get(m.columns["input"])
                outputs = row.get(m.columns["output"])
                outputs = [outputs] if isinstance(outputs, str) else outputs
                if not isinstance(x, str) or not x.strip():
                    raise BadRow("missing field", m.columns["input"], "the instance's input is missing or empty")
                if not isinstance(outputs, list) or not outputs or not all(isinstance(o, str) and o.strip() for o in outputs):
                    raise BadRow("missing field", m.columns["output"], "the instance needs a non-empty output")
                conv = [{"role": "user", "content": instance_prompt(x, instruction)},
                        {"role": "assistant", "content": outputs[0], "references": list(outputs)}]
                yield where, check_conversation(conv, m.columns["instances"])
            except BadRow as exc:
                bad(where, exc.reason, f"field '{exc.field_name}': {exc.detail}")


def sni_path(src) -> Path:
    """The local file or folder of an ``sni`` source (task files are not a hub dataset's rows)."""
    if src.path is None:
        raise ConfigError(f"dataset '{src.name}': format sni reads local task files ('path'), not a hub dataset")
    return src.path


def task_sources(src) -> list:
    """An ``sni`` source of a folder as one source per task file (named ``<dataset>/<task>``); other sources as
    they are. Each part is then its own task of the mixture (``SampleView.task``); the entry's ``weight`` is shared
    among its files (so a folder weighs what one dataset weighs in a ``weighted`` mixture) and ``max_samples``
    applies per file."""
    if src.format != "sni" or not sni_path(src).is_dir():
        return [src]
    files = task_files(src.path)
    return [replace(src, name=f"{src.name}/{file.stem}", weight=src.weight / len(files),
                    settings=src.settings.model_copy(update={"path": str(file)})) for file in files]


def task_of(spec, src) -> str | None:
    """The task a source's samples belong to: the dataset's ``task``, else an ``sni`` file's stem."""
    return spec.task or (sni_path(src).stem if src.format == "sni" else None)


def task_instructions(datasets: list) -> dict[str, str]:
    """Each task's instruction text, by task name (as the pipeline names the tasks), from the ``sni`` datasets
    of a recipe; any other format is refused, since its samples have no instruction to read."""
    out: dict[str, str] = {}
    for spec in datasets:
        src = resolve_source(spec)
        if src.format != "sni":
            raise DataError(f"data.datasets: '{src.name}' has format '{src.format}'; task hint reads each task's "
                            "instruction from Super-NaturalInstructions task files (format: sni)",
                            reason="wrong format")
        mapping = Mapping.for_format("sni", src.settings.columns, src.settings.roles)
        for part in task_sources(src):
            for file in task_files(part.path):
                text = instruction_text(read_task(file, mapping), src.settings.instruction_examples)
                name = task_of(spec, part)
                if out.setdefault(name, text) != text:
                    raise DataError(f"data.datasets: task '{name}' has two different instructions ({file}); give "
                                    "its files one task each (leave 'task' unset)", reason="wrong format")
    return out


def with_instruction_placement(data, fusion: bool):
    """``data`` (a ``DataConfig``) with every dataset's ``instruction_in_prompt`` set from ``hint.fusion``; a dataset
    (entry or card) that sets it otherwise is refused (the two would say different things)."""
    datasets = []
    for i, spec in enumerate(data.datasets):
        given = resolve_source(spec).settings.instruction_in_prompt
        if given is not None and given != fusion:
            raise ConfigError(f"data.datasets[{i}].instruction_in_prompt: {given} contradicts hint.fusion: {fusion}; "
                              "set hint.fusion only")
        datasets.append(spec.model_copy(update={"instruction_in_prompt": fusion}))
    return data.model_copy(update={"datasets": datasets})
