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

from mmtune.errors import ModelError
from mmtune.interop.diffusers_ip2p import export_diffusers
from mmtune.interop.hf_causal_lm import export_hf
from mmtune.interop.hf_instructblip import BLIP_READER, InstructBlipReader, export_blip2, export_instructblip
from mmtune.interop.hf_instructblipvideo import export_instructblipvideo
from mmtune.interop.hf_llava import LLAVA, LlavaReader, export_llava

READERS: tuple[LlavaReader | InstructBlipReader, ...] = (LLAVA, BLIP_READER)
"""Formats whose checkpoints mmtune starts from or opens (parts: language model, image encoder, connector)."""

EXPORTERS: dict[str, Callable[..., Path]] = {"hf": export_hf, "hf-llava": export_llava,
                                             "hf-instructblip": export_instructblip, "hf-blip2": export_blip2,
                                             "hf-instructblipvideo": export_instructblipvideo,
                                             "diffusers": export_diffusers}
"""``mmtune export --format NAME``: ``exporter(model, tokenizer, out_dir)`` with adapters merged (``diffusers``:
an image-editing run's pipeline, whose LoRA may be kept as diffusers LoRA weights)."""


def reader_for(source: str | Path | None):
    """The reader of the checkpoint directory ``source``, or None for anything else."""
    if source is None:
        return None
    return next((reader for reader in READERS if reader.recognises(source)), None)


def default_format(model) -> str:
    """The export format of a model's family: ``diffusers`` for an image-editing (InstructPix2Pix) pipeline; a
    causal LM for a text model; for a multimodal model an
    InstructBLIP checkpoint when its one image branch has a Q-Former (BLIP-2 when the Q-Former reads no text),
    an InstructBLIP-Video checkpoint for a model with a video or audio branch, else a Llava checkpoint.

    A video / audio model other than InstructBLIP-Video's (one video branch, a per-frame instruction-aware
    Q-Former) has no Hugging Face format: :class:`~mmtune.errors.ModelError` says why in one line, and that
    the run stays in mmtune's format (``final/`` reloads exactly with ``load_for_inference``).
    """
    from mmtune.interop.diffusers_ip2p import FORMAT as DIFFUSERS_FORMAT
    from mmtune.interop.diffusers_ip2p import is_edit_pipeline
    from mmtune.interop.hf_instructblipvideo import FORMAT as VIDEO_FORMAT
    from mmtune.interop.hf_instructblipvideo import STAYS, check_exportable, mmtune_only
    from mmtune.models.multimodal.connectors import QFormerConnector
    from mmtune.models.multimodal.model import MultimodalLM

    if is_edit_pipeline(model):
        return DIFFUSERS_FORMAT
    if not isinstance(model, MultimodalLM):
        return "hf"
    if mmtune_only(model):
        try:
            check_exportable(model)
        except ModelError as exc:
            reason = str(exc).removeprefix(f"export --format {VIDEO_FORMAT}: ").removesuffix(STAYS)
            raise ModelError(f"export: no Hugging Face format holds this model (the video one, {VIDEO_FORMAT}, "
                             f"refuses it: {reason}){STAYS}") from None
        return VIDEO_FORMAT
    connector = model.branches["image"].connector if set(model.branches) == {"image"} else None
    if isinstance(connector, QFormerConnector):
        return "hf-instructblip" if connector.instruction_aware else "hf-blip2"
    return "hf-llava"
