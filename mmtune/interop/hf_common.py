"""What the Hugging Face multimodal formats (``hf_llava``, ``hf_instructblip``, ``hf_instructblipvideo``) do alike.

Reading: one part of a checkpoint loaded through transformers' ``key_mapping``
(the other parts' keys left unread), the checkpoint's image processor and its
saved settings. Exporting: the ``<image>`` token the LLM's tokenizer gains,
the image processor's settings equal to an
:class:`~mmtune.modalities.image.ImageTransform`, the weights assigned to the
format's model class, and the directory written.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import torch
from torch import nn

from mmtune.errors import ModelError
from mmtune.modalities.image import IMAGE_TAG, ImageTransform
from mmtune.utils.atomic import atomic_directory

# --------------------------------------------------------------------------- reading


@contextlib.contextmanager
def quiet_transformers():
    """Loading one part reports the other parts' keys as unexpected: expected here, so not shown."""
    from transformers.utils import logging as hf_logging

    before = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(before)


def load_part(model_class, source: str, config, key_mapping: dict[str, str], what: str, *,
              checkpoint: str = "checkpoint", **kwargs) -> nn.Module:
    """``model_class`` from the part of ``source`` that ``key_mapping`` renames to its own keys; a part whose
    weights are missing is refused (``the {checkpoint} lacks {what} weights``)."""
    with quiet_transformers():
        model, info = model_class.from_pretrained(source, config=config, key_mapping=key_mapping,
                                                  output_loading_info=True, **kwargs)
    missing = [k for k in info.get("missing_keys", ()) if k]
    if missing:
        raise ModelError(f"{source}: the {checkpoint} lacks {what} weights ({len(missing)} missing, "
                         f"e.g. {sorted(missing)[:3]})")
    return model


def checkpoint_image_processor(source: str):
    """The checkpoint's image processor (its normalisation), or None when it has none."""
    from transformers import AutoImageProcessor

    try:
        return AutoImageProcessor.from_pretrained(source)
    except Exception:  # transformers raises several types for a directory without one
        return None


def image_processor_settings(source: str | Path) -> dict | None:
    """The image processor settings saved with a checkpoint, or None when it has none."""
    path = Path(source).expanduser()
    # transformers 5 nests the image processor in processor_config.json; older checkpoints
    # (e.g. llava-hf/llava-1.5-7b-hf) have a preprocessor_config.json.
    if (path / "processor_config.json").is_file():
        return json.loads((path / "processor_config.json").read_text()).get("image_processor", {})
    if (path / "preprocessor_config.json").is_file():
        return json.loads((path / "preprocessor_config.json").read_text())
    return None


# --------------------------------------------------------------------------- exporting


def add_media_token(tokenizer, llm: nn.Module, fmt: str, tag: str = IMAGE_TAG) -> int:
    """Add ``tag`` (``<image>``, ``<video>``) as a special token (if absent) and make the LLM's vocabulary cover it
    (rows zero, suppressed)."""
    from tokenizers import AddedToken

    if tag not in tokenizer.get_vocab():
        tokenizer.add_tokens([AddedToken(tag, special=True, normalized=False)], special_tokens=True)
    token_id = tokenizer.convert_tokens_to_ids(tag)
    if tokenizer.encode(tag, add_special_tokens=False) != [token_id]:
        raise ModelError(f"export --format {fmt}: the tokenizer does not keep {tag} as one token")
    vocab = llm.get_input_embeddings().weight.shape[0]
    if token_id >= vocab:
        llm.resize_token_embeddings(token_id + 1, mean_resizing=False)
        with torch.no_grad():  # a media position's embedding is replaced; its logit must never win
            llm.get_input_embeddings().weight[vocab:] = 0
            out = llm.get_output_embeddings()
            out.weight[vocab:] = 0
            if out.bias is not None:
                out.bias[vocab:] = 0
        suppress = list(llm.generation_config.suppress_tokens or [])
        llm.generation_config.suppress_tokens = sorted({*suppress, *range(vocab, token_id + 1)})
    return token_id


def image_processor_kwargs(transform: ImageTransform) -> tuple[dict, dict]:
    """(the square ``size`` / ``crop_size``, the settings every mode shares) of an image processor doing what
    ``transform`` does: PIL bicubic resampling, rescaling to [0, 1], ``transform``'s mean and std."""
    square = {"height": transform.size, "width": transform.size}
    common = dict(image_mean=list(transform.mean), image_std=list(transform.std), resample=3,  # PIL bicubic
                  do_resize=True, do_rescale=True, rescale_factor=1 / 255, do_normalize=True, do_convert_rgb=True)
    return square, common


def assign_weights(model_class, config, state: dict[str, torch.Tensor], *, lm_head: str, tied: bool, fmt: str):
    """``model_class(config)`` built on the meta device with ``state`` assigned to it; with ``tied``
    embeddings the ``lm_head`` weight is the input embeddings' (the caller ties it), so it is not assigned."""
    with torch.device("meta"):
        hf_model = model_class(config)
    if tied:
        state.pop(lm_head, None)
    missing, unexpected = hf_model.load_state_dict(state, strict=False, assign=True)
    missing = [k for k in missing if not (tied and k == lm_head)]
    if missing or unexpected:
        raise ModelError(f"export --format {fmt}: weights do not fit {type(hf_model).__name__} "
                         f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    return hf_model


def save_export(out_dir: str | Path, hf_model, processor, tokenizer) -> Path:
    """Write the model, its processor and tokenizer to ``out_dir`` at once (a half-written export never shows)."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with atomic_directory(out_dir) as tmp:
        hf_model.save_pretrained(tmp, safe_serialization=True)
        processor.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return out_dir
