"""Export a multimodal mmtune model as a transformers ``LlavaForConditionalGeneration`` checkpoint.

HF Llava is one fixed architecture: a transformers vision tower (CLIP /
SigLIP vision model) read at one hidden layer, a projector that is always
Linear -> activation -> Linear, and a causal LM. An mmtune model maps onto it
exactly only when its encoder is an ``hf`` CLIP / SigLIP vision model and its
connector ``mlp2x_gelu``; anything else is refused with the reason, because a
checkpoint that loads but computes something else would be worse than none.

The mapping (checked against transformers' ``models/llava``):

- ``select_layer`` -> ``vision_feature_layer``; ``select_feature: patch`` on
  CLIP -> ``vision_feature_select_strategy: default`` (drops the CLS token),
  every other case -> ``full`` (SigLIP has no CLS token to drop);
- ``MLPProjector.layers.0 / .2`` -> ``multi_modal_projector.linear_1 /
  linear_2`` with ``projector_hidden_act: gelu`` (exact GELU, as ``nn.GELU()``)
  and ``multimodal_projector_bias: true``;
- LoRA anywhere is merged first; the LLM's base model -> ``language_model``,
  its ``lm_head`` -> ``lm_head``;
- the tokenizer gets ``<image>`` as a special token (``image_token_index``);
  if that grows the vocabulary, the new embedding rows are zero and the token
  is in ``generation_config.suppress_tokens`` so it is never generated;
- the processor is ``LlavaProcessor`` around ``LlavaImageProcessorPil``
  configured like mmtune's :class:`~mmtune.vision.images.ImageTransform`:
  ``pad`` = ``do_pad`` (LLaVA's expand-to-square with the mean colour) then a
  bicubic resize to the square size; ``resize`` = bicubic resize; ``center_crop``
  = shortest edge to size, then crop. The PIL backend resizes with PIL exactly
  as mmtune does; the torchvision backend (``backend="torchvision"``) resizes
  tensors and gives slightly different pixels.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from mmtune.errors import ModelError
from mmtune.models.finetuned import load_for_inference
from mmtune.utils.atomic import atomic_directory
from mmtune.vision.connectors import MLPProjector
from mmtune.vision.encoders import HFVisionEncoder, OpenClipEncoder
from mmtune.vision.images import IMAGE_TAG, ImageTransform
from mmtune.vision.model import MultimodalLM

log = logging.getLogger(__name__)
HF_VISION_TYPES = ("clip_vision_model", "siglip_vision_model")


def check_exportable(model: nn.Module) -> None:
    """Raise :class:`ModelError` saying why ``model`` has no exact HF Llava equivalent."""
    if not isinstance(model, MultimodalLM):
        raise ModelError("export --format hf-llava: this is a text-only model; export it with --format hf")
    encoder, connector = model.encoder, model.connector
    if not isinstance(encoder, HFVisionEncoder):
        if isinstance(encoder, OpenClipEncoder):
            why = "an open_clip encoder has no transformers equivalent (HF Llava's vision tower is a transformers model)"
        else:
            why = f"the custom encoder {type(encoder).__name__} has no transformers equivalent"
        raise ModelError(f"export --format hf-llava: {why}; use model.vision.encoder.kind: hf with a CLIP or "
                         "SigLIP vision model")
    if encoder.model.config.model_type not in HF_VISION_TYPES:
        raise ModelError(f"export --format hf-llava: vision model type {encoder.model.config.model_type} is not "
                         f"one of {', '.join(HF_VISION_TYPES)}")
    if not isinstance(connector, MLPProjector):
        raise ModelError(f"export --format hf-llava: the custom connector {type(connector).__name__} has no HF "
                         "Llava equivalent (its projector is always Linear, GELU, Linear)")
    if connector.depth != 2:
        kind = "linear" if connector.depth == 1 else f"mlp{connector.depth}x_gelu"
        raise ModelError(f"export --format hf-llava: connector {kind}: HF Llava's projector is always a 2-layer "
                         "MLP (mlp2x_gelu)")
    if encoder.num_prefix > 1:
        raise ModelError(f"export --format hf-llava: the vision model has {encoder.num_prefix} prefix tokens; "
                         "HF Llava drops at most one")
    llm = model.language_model
    if not hasattr(llm, "lm_head") or llm.get_output_embeddings() is not llm.lm_head:
        raise ModelError("export --format hf-llava: the language model has no lm_head output layer")


def select_strategy(encoder: HFVisionEncoder) -> str:
    """``default`` drops exactly the first token, which is mmtune's ``patch`` on a CLS model."""
    return "default" if encoder.num_prefix == 1 and not encoder.keep_cls else "full"


def image_token_id(tokenizer, llm: nn.Module) -> int:
    """Add ``<image>`` as a special token (if absent) and make the LLM's vocabulary cover it."""
    from tokenizers import AddedToken

    if IMAGE_TAG not in tokenizer.get_vocab():
        tokenizer.add_tokens([AddedToken(IMAGE_TAG, special=True, normalized=False)], special_tokens=True)
    token_id = tokenizer.convert_tokens_to_ids(IMAGE_TAG)
    if tokenizer.encode(IMAGE_TAG, add_special_tokens=False) != [token_id]:
        raise ModelError(f"export --format hf-llava: the tokenizer does not keep {IMAGE_TAG} as one token")
    vocab = llm.get_input_embeddings().weight.shape[0]
    if token_id >= vocab:
        llm.resize_token_embeddings(token_id + 1, mean_resizing=False)
        with torch.no_grad():  # an image position's embedding is replaced; its logit must never win
            llm.get_input_embeddings().weight[vocab:] = 0
            out = llm.get_output_embeddings()
            out.weight[vocab:] = 0
            if out.bias is not None:
                out.bias[vocab:] = 0
        suppress = list(llm.generation_config.suppress_tokens or [])
        llm.generation_config.suppress_tokens = sorted({*suppress, *range(vocab, token_id + 1)})
    return token_id


def llava_state_dict(model: MultimodalLM) -> dict[str, torch.Tensor]:
    """mmtune's parameters under ``LlavaForConditionalGeneration``'s module names (LoRA merged)."""
    from mmtune.vision.build import merged_state_dict

    llm = model.language_model
    prefix = llm.base_model_prefix
    state = {}
    for key, value in merged_state_dict(llm).items():
        if key.startswith(f"{prefix}."):
            state[f"model.language_model.{key.removeprefix(prefix + '.')}"] = value
        elif key.startswith("lm_head."):
            state[key] = value
        else:
            raise ModelError(f"export --format hf-llava: language model parameter {key} is neither in its "
                             f"base model '{prefix}' nor in lm_head")
    for key, value in merged_state_dict(model.encoder.model).items():
        state[f"model.vision_tower.{key}"] = value
    projector = merged_state_dict(model.connector)
    for ours, theirs in (("layers.0", "linear_1"), ("layers.2", "linear_2")):
        for kind in ("weight", "bias"):
            state[f"model.multi_modal_projector.{theirs}.{kind}"] = projector[f"{ours}.{kind}"]
    return state


def image_processor_for(transform: ImageTransform):
    """A ``LlavaImageProcessorPil`` doing what ``transform`` does (see the module docstring)."""
    from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

    square = {"height": transform.size, "width": transform.size}
    common = dict(image_mean=list(transform.mean), image_std=list(transform.std), resample=3,  # PIL bicubic
                  do_resize=True, do_rescale=True, rescale_factor=1 / 255, do_normalize=True, do_convert_rgb=True)
    if transform.mode == "pad":
        return LlavaImageProcessorPil(do_pad=True, size=square, do_center_crop=False, crop_size=square, **common)
    if transform.mode == "resize":
        return LlavaImageProcessorPil(do_pad=False, size=square, do_center_crop=False, crop_size=square, **common)
    return LlavaImageProcessorPil(do_pad=False, size={"shortest_edge": transform.size}, do_center_crop=True,
                                  crop_size=square, **common)


def llava_config_for(model: MultimodalLM, token_id: int):
    from transformers import LlavaConfig

    encoder: HFVisionEncoder = model.encoder
    llm = model.language_model
    text_config = llm.config.get_text_config()
    return LlavaConfig(
        vision_config=encoder.model.config.to_dict(), text_config=text_config.to_dict(),
        image_token_index=token_id, image_seq_length=model.num_image_tokens,
        projector_hidden_act="gelu", multimodal_projector_bias=True,
        vision_feature_layer=encoder.select_layer, vision_feature_select_strategy=select_strategy(encoder),
        tie_word_embeddings=bool(text_config.tie_word_embeddings),
    )


@torch.no_grad()
def export_llava(run_or_model: str, out_dir: str | Path) -> Path:
    """Write ``out_dir``: LlavaForConditionalGeneration weights, config, processor and tokenizer."""
    from transformers import LlavaForConditionalGeneration, LlavaProcessor

    model, tokenizer = load_for_inference(run_or_model, merge=True)
    check_exportable(model)
    llm = model.language_model
    if hasattr(model.llm, "peft_config"):
        raise ModelError("export --format hf-llava: the LLM's adapter could not be merged")
    token_id = image_token_id(tokenizer, llm)
    config = llava_config_for(model, token_id)
    config.dtype = next(llm.parameters()).dtype
    with torch.device("meta"):
        hf_model = LlavaForConditionalGeneration(config)
    state = llava_state_dict(model)
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    missing, unexpected = hf_model.load_state_dict(state, strict=False, assign=True)
    missing = [k for k in missing if not (config.tie_word_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise ModelError(f"export --format hf-llava: weights do not fit LlavaForConditionalGeneration "
                         f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    if config.tie_word_embeddings:
        hf_model.lm_head.weight = hf_model.model.language_model.get_input_embeddings().weight
    hf_model.generation_config = llm.generation_config
    encoder: HFVisionEncoder = model.encoder
    processor = LlavaProcessor(
        image_processor=image_processor_for(model.transform), tokenizer=tokenizer,
        patch_size=encoder.model.config.patch_size, vision_feature_select_strategy=select_strategy(encoder),
        num_additional_image_tokens=encoder.num_prefix, chat_template=tokenizer.chat_template,
        image_token=IMAGE_TAG,
    )
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with atomic_directory(out_dir) as tmp:
        hf_model.save_pretrained(tmp, safe_serialization=True)
        processor.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    log.info("exported LlavaForConditionalGeneration to %s (image token %d, %d tokens per image)",
             out_dir, token_id, model.num_image_tokens)
    return out_dir
