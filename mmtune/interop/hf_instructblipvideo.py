"""Hugging Face ``InstructBlipVideoForConditionalGeneration``: export of a frame-wise InstructBLIP video model.

transformers' ``models/instructblipvideo`` is InstructBLIP run on each frame:
``pixel_values [B, T, C, H, W]`` are encoded frame by frame by the vision
model (its ``last_hidden_state``, through ``post_layernorm``: BLIP-2's
``ln_vision``), the Q-Former reads each frame with the instruction
(``qformer_input_ids`` repeated per frame), and the ``num_query_tokens``
query outputs of every frame go through ``language_projection`` and are
concatenated frame-major (frame 0's queries, then frame 1's ...) into the
``num_query_tokens x T`` positions of ``<video>`` tokens. There is no frame
position embedding and no Q-Former across frames.

mmtune computes exactly that with a ``video`` branch whose encoder is what
``hf-instructblip`` exports (an ``hf`` InstructBLIP / BLIP-2 vision model at
its ``last_hidden_state``, or with one ``ln_vision`` ``layer_norm`` piece in
place of ``post_layernorm``; an ``open_clip`` EVA01 trunk with that piece),
no other piece, and an instruction-aware ``qformer`` connector with
``per_frame: true`` (frame-wise: each frame takes ``num_query_tokens``
positions, see ``MediaBranch``)::

    model:
      media:
        video:
          encoder: {kind: hf, name: ..., select_layer: -1, select_feature: cls_patch}
          connector: {kind: qformer, options: {per_frame: true, num_query_tokens: 32, tokenizer: bert-base-uncased}}
          frames: {mode: uniform, num_frames: 4}

Everything else is refused with the reason, and the run stays in mmtune's
format (its ``final/`` reloads exactly with
``mmtune.models.run_outputs.load_for_inference``): a Q-Former across frames
(Video-LLaMA's video Q-Former, ``per_frame: false``), a ``segment_position``
or ``spatial_pool`` piece, a per-frame ``qformer`` piece, a projector, an
audio branch (transformers has no InstructBLIP-Video with sound), a Q-Former
that reads no text (``instruction_aware: false``: transformers' video model
requires ``qformer_input_ids``), ``image_preprocess: pad``.

The mapping is ``hf-instructblip``'s (:mod:`mmtune.interop.hf_instructblip`):
LoRA merged; ``language_model.*``, ``vision_model.*`` (the vision classes
share their layout), ``query_tokens`` / ``qformer.*`` /
``language_projection.*`` unrenamed; the LLM tokenizer gains ``<video>``
(``video_token_index``; new embedding rows zero and suppressed in
``generation_config``, so mmtune never generates it).

**What the processor expresses.** ``InstructBlipVideoProcessor`` =
``InstructBlipVideoVideoProcessor`` + the LLM tokenizer + the Q-Former's
tokenizer (``qformer_tokenizer/``). The video processor does each frame what
mmtune's :class:`~mmtune.modalities.image.ImageTransform` does (``resize``:
size x size bicubic; ``center_crop``: shortest edge, then the centre; then
rescale and the encoder's mean / std), on torchvision rather than PIL:
bicubic resampling to another size can differ from PIL's by a grey level
(identical when frames already have the encoder's size). mmtune's evaluation
sampling ``uniform: N`` over a whole video is the video processor's own
sampler (``do_sample_frames: true, num_frames: N``: frame ``k * total // N``);
what it cannot express, and the caller must do before calling it (passing the
sampled frames with ``do_sample_frames=False``):

- ``headtail`` (random) and ``fps`` sampling (mmtune rounds and clamps the count
  to ``[min_frames, max_frames]``; transformers truncates and does not clamp);
- clip windows (a data row's ``start`` / ``end``);
- a frame count other than 4: the processor and ``generate()`` without
  ``input_ids`` write ``num_query_tokens x 4`` ``<video>`` tokens; the model
  itself takes any ``T`` given ``num_query_tokens x T`` video tokens
  (logged at export).

The prompt layout the processor writes is the video tokens first, then the
text as the LLM's tokenizer encodes it (BOS included when it adds one): the
built-in ``instructblip`` template's layout, so a run trained with it gets the
very ids from the processor.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from mmtune.errors import ModelError
from mmtune.interop.hf_common import add_media_token, assign_weights, image_processor_kwargs, save_export
from mmtune.interop.hf_instructblip import (
    QFORMER_ARCH_KEYS, check_language_model, check_vision_side, ln_vision_piece, vision_config, vision_state,
)
from mmtune.modalities.image import ImageTransform
from mmtune.modalities.video import VIDEO, VIDEO_TAG, FrameCounter, FrameSampling
from mmtune.models.multimodal.branch import MediaBranch
from mmtune.models.multimodal.build import merged_state_dict
from mmtune.models.multimodal.connectors import MLPProjector, QFormerConnector
from mmtune.models.multimodal.model import MultimodalLM

log = logging.getLogger(__name__)

FORMAT = "hf-instructblipvideo"
TITLE = "InstructBLIP-Video"
HF_FRAMES = 4
"""The frame count transformers' processor and ``generate()`` (without ``input_ids``) write video tokens for."""
STAYS = ("; the run stays in mmtune's format (its final/ reloads exactly with "
         "mmtune.models.run_outputs.load_for_inference)")


def mmtune_only(model: nn.Module) -> bool:
    """True when no other Hugging Face format could hold the model: it has a video or audio branch."""
    return isinstance(model, MultimodalLM) and bool({"video", "audio"} & set(model.branches))


def video_branch_problems(branch: MediaBranch) -> list[str]:
    """Why the video branch's Q-Former side is not InstructBLIP-Video's (empty when it is)."""
    problems = []
    connector = branch.connector
    if isinstance(connector, MLPProjector):
        problems.append(f"the connector is a {'linear' if connector.depth == 1 else 'MLP'} projector, not "
                        f"{TITLE}'s per-frame Q-Former")
    elif not isinstance(connector, QFormerConnector):
        problems.append(f"the connector {type(connector).__name__} has no {TITLE} equivalent (its connector is a "
                        "per-frame Q-Former: kind qformer, per_frame: true)")
    else:
        if not connector.frame_wise:
            problems.append(f"the Q-Former reads all frames at once (a video Q-Former, per_frame: false); "
                            f"{TITLE}'s runs on each frame (per_frame: true)")
        if not connector.instruction_aware:
            problems.append(f"the Q-Former reads no text (instruction_aware: false); {TITLE}'s always reads the "
                            "instruction (qformer_input_ids)")
    if len(branch.pieces) and ln_vision_piece(branch) is None:
        kinds = ", ".join(f"{name} ({type(piece).__name__})" for name, piece in branch.pieces.items())
        problems.append(f"the video branch has pieces {kinds}; between its vision model and Q-Former {TITLE} has "
                        "only ln_vision (one layer_norm piece): no frame position embedding, no pooling")
    return problems


def check_exportable(model: nn.Module) -> None:
    """Raise :class:`ModelError` (one line) saying why ``model`` has no exact ``InstructBlipVideoForConditionalGeneration``
    equivalent."""
    fmt = f"export --format {FORMAT}"
    if not isinstance(model, MultimodalLM):
        raise ModelError(f"{fmt}: this is a text-only model; export it with --format hf")
    names = sorted(model.branches)
    if names != [VIDEO.name]:
        if not mmtune_only(model):
            raise ModelError(f"{fmt}: {TITLE} has one video branch; this model has {names}: export it in its "
                             "family's format (mmtune export without --format)")
        extra = [name for name in names if name != VIDEO.name]
        raise ModelError(f"{fmt}: {TITLE} has one video branch; this model has {names} (transformers has no "
                         f"{TITLE} with {' or '.join(extra) if extra else 'that'}){STAYS}")
    branch = model.branches[VIDEO.name]
    problems = video_branch_problems(branch)
    if problems:
        raise ModelError(f"{fmt}: {'; '.join(problems)}{STAYS}")
    try:
        check_vision_side(branch, fmt, TITLE, "InstructBlipVideoVisionModel", transform=branch.transform.frame,
                          processor="InstructBlipVideoVideoProcessor")
        check_language_model(model, fmt)
    except ModelError as exc:
        raise ModelError(f"{exc}{STAYS}") from None


def video_config_for(model: MultimodalLM, token_id: int):
    from transformers import InstructBlipVideoConfig, InstructBlipVideoQFormerConfig, InstructBlipVideoVisionConfig

    branch = model.branches[VIDEO.name]
    vision = vision_config(branch)
    connector: QFormerConnector = branch.connector
    qformer = connector.qformer.config
    qformer_kwargs = {key: getattr(qformer, key) for key in QFORMER_ARCH_KEYS} | {"vocab_size": qformer.vocab_size}
    return InstructBlipVideoConfig(
        vision_config=InstructBlipVideoVisionConfig(**vision),
        qformer_config=InstructBlipVideoQFormerConfig(**qformer_kwargs, encoder_hidden_size=vision["hidden_size"]),
        text_config=model.language_model.config.get_text_config().to_dict(),
        num_query_tokens=connector.num_query_tokens, video_token_index=token_id,
    )


def video_state_dict(model: MultimodalLM) -> dict[str, torch.Tensor]:
    """mmtune's parameters under ``InstructBlipVideoForConditionalGeneration``'s names (LoRA merged)."""
    branch = model.branches[VIDEO.name]
    state = {f"language_model.{k}": v for k, v in merged_state_dict(model.language_model).items()}
    state.update({f"vision_model.{k}": v for k, v in vision_state(branch).items()})
    state.update(merged_state_dict(branch.connector))
    return state


def video_processor_for(transform: ImageTransform, sampling: FrameSampling):
    """An ``InstructBlipVideoVideoProcessor`` doing per frame what ``transform`` does; it samples frames as
    ``sampling`` does when that is ``uniform`` (else the caller passes sampled frames)."""
    from transformers import InstructBlipVideoVideoProcessor

    square, common = image_processor_kwargs(transform)
    if transform.mode == "resize":
        geometry = {"size": square, "do_center_crop": False}
    elif transform.mode == "center_crop":
        geometry = {"size": {"shortest_edge": transform.size}, "do_center_crop": True, "crop_size": square}
    else:
        raise ModelError(f"image_preprocess {transform.mode} has no InstructBlipVideoVideoProcessor equivalent")
    if sampling.mode == "uniform":
        frames = {"do_sample_frames": True, "num_frames": sampling.num_frames}
    else:
        log.warning("frames.mode %s has no transformers sampler: the exported processor takes the frames as given "
                    "(do_sample_frames false); sample them as mmtune does before calling it", sampling.mode)
        frames = {"do_sample_frames": False}
    return InstructBlipVideoVideoProcessor(**geometry, **common, **frames)


@torch.no_grad()
def export_instructblipvideo(model: nn.Module, tokenizer, out_dir: str | Path) -> Path:
    """``mmtune export --format hf-instructblipvideo``: an ``InstructBlipVideoForConditionalGeneration`` directory
    (weights, config, processor, tokenizer, Q-Former tokenizer). ``model`` has its adapters merged."""
    from transformers import InstructBlipVideoForConditionalGeneration, InstructBlipVideoProcessor

    check_exportable(model)
    llm = model.language_model
    if hasattr(model.llm, "peft_config"):
        raise ModelError(f"export --format {FORMAT}: the LLM's adapter could not be merged")
    branch = model.branches[VIDEO.name]
    connector: QFormerConnector = branch.connector
    sampling = branch.transform.sampling
    if sampling.mode != "uniform" or sampling.num_frames != HF_FRAMES:
        log.warning("frames %s: transformers' InstructBlipVideoProcessor and generate() (without input_ids) "
                    "write video tokens for %d frames; the exported model takes any count given num_query_tokens x "
                    "frames <video> tokens", FrameCounter(sampling).rule, HF_FRAMES)
    token_id = add_media_token(tokenizer, llm, FORMAT, VIDEO_TAG)
    config = video_config_for(model, token_id)
    config.dtype = next(llm.parameters()).dtype
    tied = bool(config.text_config.tie_word_embeddings)
    hf_model = assign_weights(InstructBlipVideoForConditionalGeneration, config, video_state_dict(model),
                              lm_head="language_model.lm_head.weight", tied=tied, fmt=FORMAT)
    if tied:
        hf_model.language_model.lm_head.weight = hf_model.language_model.get_input_embeddings().weight
    hf_model.generation_config = llm.generation_config
    processor = InstructBlipVideoProcessor(video_processor=video_processor_for(branch.transform.frame, sampling),
                                           tokenizer=tokenizer, qformer_tokenizer=connector.text_tokenizer,
                                           num_query_tokens=connector.num_query_tokens)
    out_dir = save_export(out_dir, hf_model, processor, tokenizer)
    log.info("exported %s to %s (video token %d, %d query tokens per frame)", type(hf_model).__name__, out_dir,
             token_id, connector.num_query_tokens)
    return out_dir
