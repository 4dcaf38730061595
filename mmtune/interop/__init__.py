"""Checkpoint formats of other toolkits: reading their parts, loading them whole, exporting to them.

Each format is one module; this table is the one place it is registered.
Generic loaders (``mmtune.models.loading``, ``mmtune.models.multimodal``)
import nothing from here; ``mmtune.models.open`` consults :data:`READERS`
when a recipe or a command names a directory, and ``mmtune export`` looks up
:data:`EXPORTERS`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from mmtune.interop.hf_causal_lm import export_hf
from mmtune.interop.hf_instructblip import BLIP_READER, InstructBlipReader, export_blip2, export_instructblip
from mmtune.interop.hf_llava import LLAVA, LlavaReader, export_llava

READERS: tuple[LlavaReader | InstructBlipReader, ...] = (LLAVA, BLIP_READER)
"""Formats whose checkpoints mmtune starts from or opens (parts: language model, image encoder, connector)."""

EXPORTERS: dict[str, Callable[..., Path]] = {"hf": export_hf, "hf-llava": export_llava,
                                             "hf-instructblip": export_instructblip, "hf-blip2": export_blip2}
"""``mmtune export --format NAME``: ``exporter(model, tokenizer, out_dir)`` with adapters merged."""


def reader_for(source: str | Path | None):
    """The reader of the checkpoint directory ``source``, or None for anything else."""
    if source is None:
        return None
    return next((reader for reader in READERS if reader.recognises(source)), None)


def default_format(model) -> str:
    """The export format of a model's family: a causal LM for a text model; for a multimodal model an
    InstructBLIP checkpoint when its one image branch has a Q-Former (BLIP-2 when the Q-Former reads no text),
    else a Llava checkpoint."""
    from mmtune.models.multimodal.connectors import QFormerConnector
    from mmtune.models.multimodal.model import MultimodalLM

    if not isinstance(model, MultimodalLM):
        return "hf"
    connector = model.branches["image"].connector if set(model.branches) == {"image"} else None
    if isinstance(connector, QFormerConnector):
        return "hf-instructblip" if connector.instruction_aware else "hf-blip2"
    return "hf-llava"
