"""Where an SFT run starts: ``model.name``, or an earlier run's ``final/`` (``init_from``, sequential tuning).

``merge``: the earlier adapter is folded into its base (``models.open`` opens an adapter ``final/`` that
way), and this run's method trains the merged model like any base; its ``final/`` names the earlier
``final/`` as its base model, so it opens link by link. ``continue``: the earlier adapter is loaded
trainable on its own base and trains on; ``final/`` is then an adapter of that same base. The tokenizer,
with the chat template the earlier run trained with, comes from the earlier ``final/`` either way.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from mmtune.config.schema import InitFrom, ModelConfig, SftRecipe
from mmtune.errors import ConfigError
from mmtune.models.open import MMTUNE_META


@dataclass(frozen=True)
class StartingPoint:
    model: ModelConfig
    """The model that opens (and that ``final/`` names as its base)."""
    tokenizer: ModelConfig
    """Where the tokenizer and its chat template come from."""
    adapter: Path | None = None
    """An earlier adapter that keeps training (``continue``)."""


def earlier_final(init: InitFrom) -> Path:
    """The ``final/`` of ``init_from.run`` (a run directory or the ``final/`` itself), or one line why not."""
    path = Path(init.run).expanduser()
    for candidate in (path / "final", path):
        if (candidate / MMTUNE_META).is_file():
            meta = json.loads((candidate / MMTUNE_META).read_text())
            if meta.get("family", "causal_lm") != "causal_lm":
                raise ConfigError(f"init_from.run: {candidate} holds a '{meta['family']}' model; only text models "
                                  "(family causal_lm) can be started from yet")
            return candidate.resolve()  # final/ names it as its base: absolute, so it opens from anywhere
    raise ConfigError(f"init_from.run: {path} has no final/ model (is it a finished mmtune run?)")


def starting_point(recipe: SftRecipe) -> StartingPoint:
    if recipe.init_from is None:
        return StartingPoint(recipe.model, recipe.model)
    final = earlier_final(recipe.init_from)
    tokenizer = ModelConfig(name=str(final), trust_remote_code=recipe.model.trust_remote_code)
    if recipe.init_from.adapter == "merge":
        return StartingPoint(recipe.model.model_copy(update={"name": str(final), "gguf_file": None, "revision": None}),
                             tokenizer)
    if not (final / "adapter_config.json").is_file():
        raise ConfigError(f"init_from.adapter: 'continue' trains an adapter on, but {final} holds full weights; "
                          "use 'merge'")
    saved = json.loads((final / MMTUNE_META).read_text())["base_model"]
    base = recipe.model.model_copy(update={k: saved[k] for k in ("name", "gguf_file", "revision")})
    return StartingPoint(base, tokenizer, final)


def continue_adapter(llm: nn.Module, adapter: Path) -> nn.Module:
    """``llm`` with the earlier adapter loaded trainable (its own rank and target modules)."""
    from peft import PeftModel

    return PeftModel.from_pretrained(llm, str(adapter), is_trainable=True)
