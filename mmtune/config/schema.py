"""The recipe schema: the one typed home of every recipe key and its default.

A recipe YAML maps 1:1 onto :class:`Recipe`. Every default is written here and
nowhere else; code reads ``cfg.train.lr``, never ``getattr(cfg, "lr", 1e-4)``.
Key names are public interface (see configs/README.md) and stay stable.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

TemplateName = Literal["auto", "alpaca", "vicuna_v1", "chatml", "llama2", "plain"]
FormatName = Literal["alpaca", "sharegpt", "vicuna", "openai", "oasst", "dolly", "llava", "self_correction"]


class _Strict(BaseModel):
    """Unknown keys are errors, values are not silently coerced across kinds."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Strict):
    name: str = "smollm2-135m-instruct"
    """Hub name, local directory, or an offline alias (see ``mmtune.models.aliases``)."""
    gguf_file: str | None = None
    """GGUF file inside ``name`` when loading a GGUF checkpoint directly."""
    revision: str | None = None
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Weights dtype. ``auto``: bfloat16 on GPU, float32 on CPU."""
    trust_remote_code: bool = False
    attn_implementation: Literal["auto", "sdpa", "eager", "flash_attention_2"] = "auto"
    """``auto``: flash_attention_2 when installed on a GPU, else sdpa."""
    vision: "VisionConfig | None" = None
    """Image encoder + connector in front of the LLM; absent for a text-only model."""


class EncoderConfig(_Strict):
    """An image encoder (see ``mmtune.vision.encoders``): which one, and which of its features."""

    kind: str = "open_clip"
    """``open_clip``, ``hf`` (transformers CLIP / SigLIP vision model) or ``package.module:builder``."""
    name: str = "ViT-L-14-336"
    """open_clip model name, or hub name / local directory for ``hf``."""
    pretrained: str | None = "openai"
    """open_clip pretrained tag or weights file; ``null``: random weights (tests, tiny recipes)."""
    architecture: dict[str, Any] | None = None
    """open_clip model config (``embed_dim``, ``vision_cfg``, ...) or transformers vision config dict,
    used instead of ``name`` to build an encoder of that shape with random weights."""
    select_layer: int = -2
    """Hidden state to use, indexed like transformers' ``hidden_states`` (-2: the penultimate layer)."""
    select_feature: Literal["patch", "cls_patch"] = "patch"
    """``patch`` drops the CLS token (LLaVA), ``cls_patch`` keeps it."""
    image_size: int | None = None
    """Input resolution; default: the encoder's own."""
    image_mean: tuple[float, float, float] | None = None
    """Normalisation; default: the encoder's own preprocessing statistics."""
    image_std: tuple[float, float, float] | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    """Keyword arguments for a custom ``package.module:builder``."""


class ConnectorConfig(_Strict):
    """Encoder features -> LLM embeddings (see ``mmtune.vision.connectors``)."""

    kind: str = "mlp2x_gelu"
    """``linear``, ``mlp{N}x_gelu`` (LLaVA) or ``package.module:builder``."""
    weights: str | None = None
    """Start from these connector weights: a ``connector.safetensors`` file or a run directory
    (LLaVA stage 2 loads the stage-1 projector this way)."""
    options: dict[str, Any] = Field(default_factory=dict)
    """Keyword arguments for a custom ``package.module:builder``."""


class VisionConfig(_Strict):
    encoder: EncoderConfig = Field(default_factory=EncoderConfig)
    connector: ConnectorConfig = Field(default_factory=ConnectorConfig)
    image_preprocess: Literal["pad", "resize", "center_crop"] = "pad"
    """``pad``: expand to a square with the mean colour (LLaVA-1.5), ``resize``: stretch,
    ``center_crop``: shorter side to size, then crop the centre."""


class PromptErasure(_Strict):
    """Orca-2 prompt erasure: train under a generic system message instead of the detailed one."""

    replace_with: str | None = None
    """The generic system message trained on; ``null`` removes the system message."""


class DatasetSpec(_Strict):
    """One entry of ``data.datasets``: a card by name/path, or a file/hub set inline."""

    card: str | None = None
    """Name of a card in ``datasets/`` (without .yaml) or a path to a card file."""
    path: str | None = None
    """Local .json / .jsonl / .parquet file (inline alternative to a card)."""
    hub: str | None = None
    """Hugging Face dataset name, read through ``datasets.load_dataset``."""
    split: str = "train"
    format: FormatName | None = None
    columns: dict[str, str] = Field(default_factory=dict)
    """Canonical field name -> column name in the file (see configs/README.md)."""
    roles: dict[str, str] = Field(default_factory=dict)
    """Canonical role (system/user/assistant) -> role name used in the file."""
    weight: float = 1.0
    """Relative weight in the mixture (with ``data.mixture: weighted``)."""
    max_samples: int | None = None
    oasst_best_path_only: bool = False
    """OASST trees: keep only the best-ranked reply at every turn."""
    image_folder: str | None = None
    """``llava``: folder the ``image`` paths are relative to (no image may resolve outside it)."""
    prompt_erasure: PromptErasure | None = None
    """Replace each sample's system message at training time (kept in the sample's metadata)."""

    @model_validator(mode="after")
    def _one_source(self) -> "DatasetSpec":
        given = [k for k in ("card", "path", "hub") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError("give exactly one of 'card', 'path' or 'hub'")
        if self.card is None and self.format is None:
            raise ValueError("'format' is required when the dataset is given by 'path' or 'hub'")
        if self.weight <= 0:
            raise ValueError("'weight' must be > 0")
        return self


class DataConfig(_Strict):
    datasets: list[DatasetSpec] = Field(default_factory=list)
    template: TemplateName = "auto"
    """``auto`` uses the tokenizer's own chat template (an error if it has none)."""
    max_length: int = Field(default=1024, gt=8)
    packing: bool = True
    train_on_prompt: bool = False
    mixture: Literal["concat", "weighted", "sqrt"] = "concat"
    """concat: every sample once; weighted: resample by ``weight``; sqrt: p ~ sqrt(size)."""
    mixture_size: int | None = None
    """Samples drawn per epoch for weighted/sqrt mixtures (default: total size)."""
    val_fraction: float = Field(default=0.0, ge=0.0, lt=1.0)
    val_max_samples: int = 512
    on_bad_sample: Literal["error", "skip"] = "error"
    cache: bool = True
    cache_dir: str | None = None
    """Default: $MMTUNE_CACHE/data or ~/.cache/mmtune/data."""
    shuffle: bool = True
    num_workers: int = Field(default=2, ge=0)
    """DataLoader worker processes that build batches (and load images) ahead of the step."""


class LoraConfig(_Strict):
    rank: int = Field(default=16, gt=0)
    alpha: float = 32.0
    dropout: float = Field(default=0.05, ge=0.0, lt=1.0)
    target_modules: list[str] | Literal["all-linear"] = "all-linear"
    use_dora: bool = False
    use_rslora: bool = False


class ParamGroup(_Strict):
    pattern: str
    """Regular expression searched in the parameter name."""
    lr: float | None = None
    weight_decay: float | None = None


class ComponentMethod(_Strict):
    """How one part of a multimodal model trains."""

    trainable: Literal["frozen", "full", "lora"]
    lr: float | None = None
    """Learning rate of this part (default: ``train.lr``)."""


class MethodConfig(_Strict):
    name: Literal["full", "freeze", "lora", "qlora", "frozen"] = "lora"
    """How the LLM trains (``frozen``: not at all, e.g. LLaVA stage 1)."""
    llm_lr: float | None = None
    """Learning rate of the LLM's trained parameters (default: ``train.lr``)."""
    encoder: ComponentMethod = Field(default_factory=lambda: ComponentMethod(trainable="frozen"))
    """The image encoder (multimodal models only); LoRA uses ``method.lora``."""
    connector: ComponentMethod = Field(default_factory=lambda: ComponentMethod(trainable="full"))
    """The connector (multimodal models only)."""
    lora: LoraConfig = Field(default_factory=LoraConfig)
    trainable: list[str] = Field(default_factory=list)
    """``freeze``: regular expressions of parameter names that stay trainable."""
    param_groups: list[ParamGroup] = Field(default_factory=list)
    """Per-group learning rate / weight decay; first matching pattern wins."""

    @model_validator(mode="after")
    def _freeze_needs_patterns(self) -> "MethodConfig":
        if self.name == "freeze" and not self.trainable:
            raise ValueError("method 'freeze' needs 'trainable' patterns")
        return self


class TrainConfig(_Strict):
    seed: int = 42
    max_steps: int | None = None
    """Optimizer steps; when unset, ``epochs`` full passes over the data."""
    epochs: float = Field(default=1.0, gt=0)
    micro_batch_size: int = Field(default=4, gt=0)
    grad_accum_steps: int = Field(default=1, gt=0)
    lr: float = Field(default=2e-4, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_ratio: float = Field(default=0.03, ge=0, le=1)
    warmup_steps: int | None = None
    """Overrides ``warmup_ratio`` when set."""
    min_lr_ratio: float = Field(default=0.0, ge=0, le=1)
    max_grad_norm: float | None = 1.0
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    """``auto``: bf16 autocast on a GPU that supports it, none on CPU."""
    gradient_checkpointing: bool = False
    compile: bool = False
    log_every: int = Field(default=1, gt=0)
    eval_every: int | None = None
    save_every: int | None = None
    keep_checkpoints: int | None = 2
    """How many periodic checkpoints to keep (None keeps all)."""
    resume: str | None = None
    """``auto`` (latest checkpoint of output_dir, if any) or a checkpoint path."""
    tensorboard: bool = True
    progress: bool = True


class Recipe(_Strict):
    output_dir: str = "runs/default"
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    method: MethodConfig = Field(default_factory=MethodConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)


ModelConfig.model_rebuild()
