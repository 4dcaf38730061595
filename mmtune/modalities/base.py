"""The contract of a modality (data side), and the media items and batch parts every modality shares.

A modality says how its media appear in conversations and become tensors:

- its ``tag`` in the text (``<image>``) and its ``placeholder_id``: every
  position of an item's embeddings in a token sequence holds this id, which is
  never a real token id;
- how a referenced file is found (:meth:`Modality.resolve`: confined to the
  dataset's media folder, never opened outside it), checked cheaply once when
  data is tokenized (:meth:`Modality.check`: the file's header), and decoded
  (:meth:`Modality.load`) in DataLoader workers;
- how a decoded item becomes a tensor for one model's branch
  (:meth:`Modality.transform`: preprocessing belongs to the model, so chat and
  export do exactly what training did), and how tensors of a batch are
  collated (:meth:`Modality.collate`).

The model side tells the data side, per modality, what it needs through a
:class:`MediaInputSpec`: how many tokens an item takes (which may vary per
item: a video's count depends on its frames), its transform, and the
tokenizer of the instruction text when the branch's connector reads it.
Nothing here imports the model code.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from mmtune.config.media import BranchConfig

if TYPE_CHECKING:
    import torch


class MediaProblem(Exception):
    """A media file that cannot be used; ``reason`` is the skip counter's key."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass
class MediaItem:
    """One media item of a sample: resolved, header-checked, with where it came from."""

    modality: str
    path: str
    """Absolute path of the file."""
    options: dict[str, Any] = field(default_factory=dict)
    """Per-item options of the modality (e.g. a video's clip window)."""
    instruction: str = ""
    """Text of the user turn that contains the item, media tags removed (for connectors that read it)."""
    origin: str = ""
    """``file: row N: field 'image'``: named by every error about this item."""
    info: dict[str, Any] = field(default_factory=dict)
    """What the header check read (a video's frame count and rate, an audio's duration): token counts use it."""
    companion: bool = False
    """Added for the item before it, with no tag of its own (a video's sound track, ``use_audio_in_video``):
    its positions follow that item's."""
    field_name: str = ""
    """The row's field the item came from (``image``; a companion's is its item's): errors about the row name it."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "MediaItem":
        return cls(**data)


class TokenCount(Protocol):
    """How many LLM positions an item takes, after expansion; ``rule`` identifies it in cache keys."""

    rule: str

    def __call__(self, item: MediaItem) -> int: ...


@dataclass(frozen=True)
class FixedTokens:
    """Every item takes the same number of positions (an image through a projector or a Q-Former)."""

    count: int

    @property
    def rule(self) -> str:
        return f"fixed:{self.count}"

    def __call__(self, item: MediaItem) -> int:
        return self.count


@dataclass(frozen=True)
class PerSegmentTokens:
    """Items of a sequence modality (a video's frames, an audio's clips): ``segments(item) x per_segment``
    positions, or ``fixed`` whatever the number of segments (a connector that resamples across them).

    ``segments`` is the modality's picklable counter (it reads the item's header ``info`` and clip window and
    raises :class:`MediaProblem` for an item that cannot give what the branch asks: a video with fewer frames),
    so it is called even when the count is fixed.
    """

    segments: Any
    """``segments(item) -> int``, with a ``rule`` string."""
    per_segment: int = 0
    fixed: int | None = None

    @property
    def rule(self) -> str:
        tokens = f"fixed:{self.fixed}" if self.fixed is not None else f"x{self.per_segment}"
        return f"{self.segments.rule}:{tokens}"

    def __call__(self, item: MediaItem) -> int:
        n = self.segments(item)
        return self.fixed if self.fixed is not None else n * self.per_segment


class Modality(abc.ABC):
    """Base class of modalities; one instance per modality, registered in ``mmtune.modalities``."""

    name: str
    """Key in recipes (``model.media.<name>``) and in batches."""
    tag: str
    """The marker of one item in conversation text."""
    placeholder_id: int
    """Token id of an item's embedding positions: negative, so it can never be a vocabulary entry."""
    plural: str
    """For reports ("12 images")."""
    branch_config: type[BranchConfig]
    """This modality's ``model.media.<name>`` section: the generic branch plus its own preprocessing keys."""
    encoder_needs: tuple[str, ...] = ()
    """Attributes :meth:`transform` reads from the encoder (checked when a branch is built)."""
    sequence: bool = False
    """Items are sequences of segments (video frames, audio clips), each encoded on its own: the item tensor is
    ``[segments, ...]``, batches are padded to the longest item with :attr:`MediaInputs.lengths`, and the
    branch runs its encoder per segment (see ``MediaBranch``)."""
    companion_key: str | None = None
    """The key of this modality's section that turns :meth:`companion` on (``use_audio_in_video``): named by the
    recipe error when the companion's branch is missing."""
    openai_part: str | None = None
    """The content-part type that carries one item in an OpenAI-style chat request (``image_url``), its body
    ``{"url": ...}``; None: ``mmtune serve`` takes no such part."""

    def companion(self, branch: BranchConfig) -> str | None:
        """Another modality each item also feeds, from the same file, as the branch section asks (a video's sound
        track through the audio branch); its items follow the item's, with no tag of their own. None by default."""
        return None

    def resolve(self, root: Path, reference: str) -> Path:
        """``root / reference``, refusing anything that resolves outside ``root`` (it is never opened)."""
        base = root.resolve()
        path = (base / reference).resolve()
        if not path.is_relative_to(base):
            raise MediaProblem(f"{self.name} path escapes media folder",
                               f"{self.name} path '{reference}' resolves outside {base}")
        return path

    @abc.abstractmethod
    def check(self, path: Path) -> dict[str, Any]:
        """Cheap check when data is tokenized: the file exists and its header is readable. Returns what the
        header says that token counts need (kept as :attr:`MediaItem.info`; ``{}`` for images)."""

    @abc.abstractmethod
    def load(self, path: str | Path, options: dict[str, Any]) -> Any:
        """Decode the whole item (in DataLoader workers); a corrupt file raises :class:`MediaProblem`."""

    @abc.abstractmethod
    def transform(self, branch: BranchConfig, encoder: Any, *, train: bool = False) -> Callable[[Any], "torch.Tensor"]:
        """Decoded item -> the tensor ``encoder`` takes, as configured by the branch section; ``train``: with
        the branch's training-time augmentation, if it has one (evaluation and chat never augment)."""

    def segment_counter(self, branch: BranchConfig, *, train: bool = False) -> Any:
        """Sequence modalities: the picklable ``counter(item) -> segments`` of this branch section (see
        :class:`PerSegmentTokens`); None for the others."""
        return None

    def collate(self, tensors: Sequence["torch.Tensor"]) -> tuple["torch.Tensor", "torch.Tensor | None"]:
        """The items of one batch, in order, as one tensor, and the segments of each item for a sequence
        modality (items padded with zeros to the longest; None otherwise: items of a modality share a shape)."""
        import torch

        if not self.sequence:
            return torch.stack(list(tensors)), None
        lengths = torch.tensor([len(t) for t in tensors], dtype=torch.long)
        longest = int(lengths.max())
        padded = [t if len(t) == longest else torch.cat([t, t.new_zeros((longest - len(t), *t.shape[1:]))])
                  for t in tensors]
        return torch.stack(padded), lengths


@dataclass
class MediaInputSpec:
    """What the data side needs from a model's branch for one modality (picklable: it goes to workers)."""

    modality: Modality
    count: TokenCount
    transform: Callable[[Any], "torch.Tensor"]
    text_tokenizer: Any
    """Tokenizer of the instruction text, when the branch's connector reads it (else None)."""
    max_text_tokens: int
    """Instruction tokens kept per item (the connector section's ``max_text_tokens``)."""
    companion: str | None = None
    """Another modality each item also feeds, from the same file (a video's sound track: ``"audio"``)."""


@dataclass
class MediaInputs:
    """One modality's part of a batch: its items in the order their placeholders appear (row-major)."""

    values: "torch.Tensor"
    text_ids: "torch.Tensor | None" = None
    """``[items, T]`` instruction tokens per item (connectors that read the instruction), else None."""
    text_mask: "torch.Tensor | None" = None
    lengths: "torch.Tensor | None" = None
    """Sequence modalities: ``[items]`` segments (frames, clips) per item; ``values`` is padded to the longest."""

    def __len__(self) -> int:
        return len(self.values)

    def to(self, device) -> "MediaInputs":
        def move(t):
            return None if t is None else t.to(device)

        return MediaInputs(self.values.to(device), move(self.text_ids), move(self.text_mask), move(self.lengths))


def load_item(item: MediaItem, spec: MediaInputSpec) -> "torch.Tensor":
    """Decode and preprocess one item; a problem's detail names the item's origin (file, row and field)."""
    try:
        return spec.transform(spec.modality.load(item.path, item.options))
    except MediaProblem as exc:
        where = f"{item.origin}: " if item.origin else ""
        raise MediaProblem(exc.reason, f"{where}{exc.detail}") from None


def collate_media(loaded: Sequence[tuple[MediaItem, "torch.Tensor"]],
                  specs: dict[str, MediaInputSpec]) -> dict[str, MediaInputs]:
    """Loaded items, in placeholder order, as one :class:`MediaInputs` per modality (with instruction tokens
    for branches whose connector reads them)."""
    out: dict[str, MediaInputs] = {}
    for name, spec in specs.items():
        mine = [(item, tensor) for item, tensor in loaded if item.modality == name]
        if not mine:
            continue
        values, lengths = spec.modality.collate([tensor for _, tensor in mine])
        inputs = MediaInputs(values, lengths=lengths)
        if spec.text_tokenizer is not None:
            enc = spec.text_tokenizer([item.instruction for item, _ in mine], padding=True, truncation=True,
                                      max_length=spec.max_text_tokens, return_tensors="pt")
            inputs.text_ids, inputs.text_mask = enc["input_ids"], enc["attention_mask"]
        out[name] = inputs
    return out


def load_media_inputs(items: Sequence[MediaItem], specs: dict[str, MediaInputSpec]) -> dict[str, MediaInputs]:
    """Decode, preprocess and collate ``items`` (generation; training batches do this per sample in workers)."""
    return collate_media([(item, load_item(item, specs[item.modality])) for item in items], specs)
