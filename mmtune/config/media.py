"""Recipe sections shared by every media branch: encoder, pieces, connector, and how each trains.

A multimodal model has one *branch* per modality (``model.media.image``,
``model.media.video`` ...): an encoder, optional pieces between it and the
connector, and a connector into the LLM. Each modality's section is a
:class:`BranchConfig` subclass defined next to the modality
(``mmtune.modalities.<name>``) with its own preprocessing keys; the recipe
schema collects them from the modality registry. What trains is addressed
per component: ``method.media.image.encoder``, ``method.media.image.connector``.

These classes import nothing from the rest of mmtune but ``peft_options``
(which imports nothing from mmtune), so modalities can subclass them without an import cycle.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mmtune.config.peft_options import check_peft_choice, checked_peft_section


class Strict(BaseModel):
    """Unknown keys are errors, values are not silently coerced across kinds."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class EncoderConfig(Strict):
    """A media encoder (see ``mmtune.models.multimodal.encoders``): which one, and which of its features."""

    kind: str = "open_clip"
    """``open_clip`` (CLIP, EVA01-g-14 ...), ``hf`` (transformers CLIP / SigLIP / BLIP-2 / InstructBLIP vision
    model) or ``package.module:builder``."""
    name: str = "ViT-L-14-336"
    """open_clip model name, or hub name / local directory for ``hf``."""
    pretrained: str | None = "openai"
    """open_clip pretrained tag or weights file; ``null``: random weights (tests, tiny recipes)."""
    architecture: dict[str, Any] | None = None
    """open_clip model config (``embed_dim``, ``vision_cfg``, ...) or transformers vision config dict,
    used instead of ``name`` to build an encoder of that shape with random weights."""
    select_layer: int = -2
    """Hidden state to use, indexed like transformers' ``hidden_states`` (-2: the penultimate layer)."""
    select_feature: Literal["patch", "cls_patch", "cls"] = "patch"
    """``patch`` drops the CLS token (LLaVA), ``cls_patch`` keeps it (BLIP-2, InstructBLIP), ``cls`` is the CLS
    token alone (an audio clip's embedding, as ImageBind gives Video-LLaMA's audio Q-Former)."""
    ln_vision: bool | None = None
    """``hf`` encoders: apply the model's own ``post_layernorm`` to the selected features. ``null``: yes for
    transformers BLIP-2 / InstructBLIP vision models (their ``post_layernorm`` holds BLIP-2's ``ln_vision``), no
    for CLIP / SigLIP. An open_clip EVA has no such norm: add the piece ``ln_vision: {kind: layer_norm}``
    (trained with the connector while the ViT stays frozen, as LAVIS does)."""
    image_size: int | None = None
    """Input resolution; default: the encoder's own."""
    image_mean: tuple[float, float, float] | None = None
    """Normalisation; default: the encoder's own preprocessing statistics."""
    image_std: tuple[float, float, float] | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    """Keyword arguments for a custom ``package.module:builder``."""


class ConnectorConfig(Strict):
    """Encoder features -> LLM embeddings (see ``mmtune.models.multimodal.connectors``)."""

    kind: str = "mlp2x_gelu"
    """``linear``, ``mlp{N}x_gelu`` (LLaVA), ``qformer`` (BLIP-2 / InstructBLIP), ``perceiver`` (Flamingo's
    resampler), ``instruction_pool`` or ``package.module:builder``."""
    weights: str | None = None
    """Start from these connector weights: a ``media.safetensors`` file, a model or run directory
    (LLaVA stage 2 loads the stage-1 projector this way), or a checkpoint of a supported format."""
    options: dict[str, Any] = Field(default_factory=dict)
    """Keyword arguments of the connector (its builder receives ``in_dim`` and ``out_dim`` too)."""
    max_text_tokens: int = Field(default=128, gt=0)
    """For connectors that read the instruction: its tokens kept per media item (longer ones are cut)."""


class PieceConfig(Strict):
    """A module between the encoder and the connector (a frame position embedding, a pooling ...)."""

    kind: str
    """``layer_norm`` (BLIP-2's ``ln_vision``) or ``package.module:builder`` of an
    ``mmtune.models.multimodal.branch.BranchPiece``."""
    options: dict[str, Any] = Field(default_factory=dict)
    """Keyword arguments (the builder also receives ``dim`` and ``num_tokens`` of its input)."""
    weights: str | None = None
    """Start from saved weights: a ``media.safetensors`` file, model or run directory holding this piece
    (stage 2 from stage 1), or, for a ``qformer`` piece, a BLIP-2 / InstructBLIP checkpoint directory (its
    Q-Former and queries: Video-LLaMA's frozen image Q-Former)."""


class BranchConfig(Strict):
    """One modality's branch: encoder -> pieces (in order) -> connector -> LLM embeddings."""

    encoder: EncoderConfig = Field(default_factory=EncoderConfig)
    pieces: dict[str, PieceConfig] = Field(default_factory=dict)
    """Optional named modules applied in order to the encoder's features before the connector."""
    connector: ConnectorConfig = Field(default_factory=ConnectorConfig)


class ComponentMethod(Strict):
    """How one component of a multimodal model trains."""

    trainable: Literal["frozen", "full", "lora", "peft"]
    lr: float | None = None
    """Learning rate of this component (default: ``train.lr``)."""
    peft: dict[str, Any] | None = None
    """``trainable: peft``: a peft config class by name and its options, put on the component's layers with
    peft's ``inject_adapter_in_model``, e.g. ``{type: LoHaConfig, r: 8, target_modules: [fc1]}``
    (``target_modules`` defaults to every Linear layer). Merged into the component's weights in ``final/``.
    Virtual-token methods (prompt / prefix tuning) belong to the LLM, not to a component."""

    _peft_options = field_validator("peft")(checked_peft_section)

    @model_validator(mode="after")
    def _peft_section(self) -> "ComponentMethod":
        check_peft_choice(self.trainable == "peft", self.peft, "trainable: peft")
        return self


def _frozen() -> ComponentMethod:
    return ComponentMethod(trainable="frozen")


def _full() -> ComponentMethod:
    return ComponentMethod(trainable="full")


class BranchMethod(Strict):
    """What trains in one branch (``method.media.<modality>``); LoRA uses ``method.lora``."""

    encoder: ComponentMethod = Field(default_factory=_frozen)
    """The encoder: frozen by default (LLaVA, InstructBLIP, Video-LLaMA keep it frozen)."""
    connector: ComponentMethod = Field(default_factory=_full)
    """The connector: trained fully by default."""
    pieces: dict[str, ComponentMethod] = Field(default_factory=dict)
    """Per piece, by its name in ``model.media.<modality>.pieces``; a piece not named here trains fully."""

    def of(self, component: str) -> ComponentMethod:
        """The method of ``encoder``, ``connector`` or ``pieces.<name>`` (a branch's component names)."""
        if component.startswith("pieces."):
            return self.pieces.get(component.removeprefix("pieces."), _full())
        return getattr(self, component)
