"""Model families: what each kind of trained model writes to ``final/`` and how it loads back.

One module per family; ``mmtune.json`` in ``final/`` names the family. Export
formats of each family live in ``mmtune.interop``.
"""

from __future__ import annotations

from types import ModuleType

from mmtune.models.families import causal_lm, hint, multimodal_lm

FAMILIES: dict[str, ModuleType] = {causal_lm.NAME: causal_lm, multimodal_lm.NAME: multimodal_lm, hint.NAME: hint}
