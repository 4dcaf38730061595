"""``method.peft`` (and a component's ``peft``): any peft config class by name, its options checked against it.

A recipe names the class (``type: PrefixTuningConfig``) and gives its options
as keys beside it. They are checked here, when the recipe is validated, so an
unknown class or option is one line naming the key and the valid choices,
not a ``TypeError`` from inside peft when the run starts. The classes are
peft's own (``peft.mapping.PEFT_TYPE_TO_CONFIG_MAPPING``): every method a new
peft release adds is available without a change here.

Some options are not the recipe's to set: ``task_type`` is filled in (a
causal LM), ``total_step`` of AdaLoRA is the run's step count, and the
bookkeeping fields peft writes into ``adapter_config.json`` itself.

This module imports nothing from mmtune (the schema uses it); peft is
imported when a ``peft`` section is validated.
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any

FILLED_IN = {
    "task_type": "filled in by mmtune (CAUSAL_LM for the LLM, none for a component)",
    "total_step": "the run's optimizer step count, filled in by mmtune",
    "peft_type": "set by the class named in 'type'",
    "base_model_name_or_path": "written by peft when the adapter is saved",
    "revision": "written by peft when the adapter is saved",
    "inference_mode": "set by peft when the adapter is loaded",
    "auto_mapping": "written by peft when the adapter is saved",
    "peft_version": "written by peft when the adapter is saved",
}
"""Config fields a recipe may not set, and why."""


def peft_config_classes() -> dict[str, type]:
    """Class name -> peft config class, for every method peft registers."""
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    return {cls.__name__: cls for cls in PEFT_TYPE_TO_CONFIG_MAPPING.values()}


def option_names(cls: type) -> list[str]:
    """The options a recipe may give ``cls`` (its dataclass init fields, less the filled-in ones)."""
    return sorted(f.name for f in dataclasses.fields(cls) if f.init and f.name not in FILLED_IN)


def check_peft_section(section: dict[str, Any]) -> None:
    """Raise ``ValueError`` (one line: the key, then the valid choices) if ``section`` cannot name a peft config.

    The message starts with the offending sub-key (``type`` or the option) so
    the loader's prefix (``method.peft``) makes it a full dotted key.
    """
    classes = peft_config_classes()
    name = section.get("type")
    if not isinstance(name, str):
        raise ValueError(f"needs 'type': the name of a peft config class, one of {', '.join(sorted(classes))}")
    if name not in classes:
        raise ValueError(f"type: unknown peft config class '{name}'{_did_you_mean(name, classes)}; "
                         f"valid: {', '.join(sorted(classes))}")
    valid = option_names(classes[name])
    for key in section:
        if key == "type":
            continue
        if key in FILLED_IN:
            raise ValueError(f"{key}: not a recipe option ({FILLED_IN[key]})")
        if key not in valid:
            raise ValueError(f"{key}: not an option of {name}{_did_you_mean(key, valid)}; valid: {', '.join(valid)}")


def _did_you_mean(word: str, choices) -> str:
    """The closest choice, letter case aside (``LohaConfig`` is ``LoHaConfig``)."""
    by_lower = {c.lower(): c for c in choices}
    close = difflib.get_close_matches(str(word).lower(), list(by_lower), n=1, cutoff=0.6)
    return f" (did you mean '{by_lower[close[0]]}'?)" if close else ""


def checked_peft_section(section: dict[str, Any] | None) -> dict[str, Any] | None:
    """A ``peft`` field's validator (the LLM's ``method.peft`` and a component's): its options checked, so
    an error names ``<key>.peft.<option>``."""
    if section is not None:
        check_peft_section(section)
    return section


def check_peft_choice(chosen: bool, section: dict[str, Any] | None, choice: str) -> None:
    """Raise ``ValueError`` unless the method choice (``name: peft`` / ``trainable: peft``) and a ``peft``
    section come together."""
    if chosen != (section is not None):
        raise ValueError(f"'{choice}' and a 'peft' section go together (peft: {{type: <peft config class>, ...}})")
