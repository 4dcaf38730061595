"""Resumable training checkpoints, written atomically.

``checkpoints/step-N/`` holds the trainable weights (safetensors) and optimizer
state, or, when processes hold shards of them (FSDP, DeepSpeed), every
process's shards in ``sharded/`` (accelerate's ``save_state`` layout); then the
scheduler state, RNG states of every process and the data position. It is
written into a temporary directory and renamed into place, so a process killed
during a save leaves the previous checkpoints untouched and no half-written
``step-N`` ever appears. Stale temporary directories are removed at the next start.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from mmtune.errors import TrainingError
from mmtune.training.distributed import shards_state
from mmtune.training.setup import Runtime
from mmtune.utils.atomic import replace_directory, temporary_sibling

_STEP_DIR = re.compile(r"^step-(\d+)$")
SHARDED_DIR = "sharded"
"""The checkpoint's subdirectory of sharded weights and optimizer state (``accelerator.save_state``'s layout)."""


@dataclass
class TrainState:
    step: int  # optimizer steps completed
    epoch: int  # epoch of the next micro-batch
    micro_batch: int  # index of the next micro-batch within that epoch (global, all processes)
    targets_seen: int  # trained tokens consumed so far


def rng_snapshot() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def trainable_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().to("cpu").contiguous() for n, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(
    run_dir: Path,
    state: TrainState,
    *,
    runtime: Runtime,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler,
    rng: dict,
    keep: int | None = None,
    extra=None,
) -> Path:
    """Write ``checkpoints/step-N`` atomically and prune old ones; returns its path. Every process calls it.

    ``model`` is the unwrapped objective. Replicated weights (one process, DDP): the main process writes
    the trainable tensors and the optimizer state. Sharded ones (FSDP, DeepSpeed): every process writes its
    shards through ``accelerator.save_state`` into ``sharded/``. Every process adds its RNG state; then the
    main process writes the rest and renames the directory into place. ``extra``: a task's own state
    (``state_dict()``), saved as ``task_state.pt``.
    """
    accelerator = runtime.accelerator
    final = run_dir / "checkpoints" / f"step-{state.step}"
    tmp = temporary_sibling(final)
    if runtime.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    if shards_state(accelerator):
        accelerator.save_state(str(tmp / SHARDED_DIR))  # a collective: every process writes its shards
    torch.save(rng, tmp / f"rng-{runtime.process_index}.pt")
    accelerator.wait_for_everyone()
    if runtime.is_main:
        if not shards_state(accelerator):
            save_file(trainable_state_dict(model), str(tmp / "trainable.safetensors"))
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
            (tmp / "optimizer_params.json").write_text(json.dumps(optimizer_param_names(model, optimizer)))
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        if extra is not None:
            torch.save(extra.state_dict(), tmp / "task_state.pt")
        (tmp / "state.json").write_text(json.dumps(asdict(state)))
        replace_directory(tmp, final, fsync=True)
        if keep is not None:
            for old in list_checkpoints(run_dir)[:-keep]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def list_checkpoints(run_dir: Path) -> list[Path]:
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)) and (p / "state.json").is_file()]
    return [p for _, p in sorted(found)]


def remove_stale_temporaries(run_dir: Path) -> None:
    root = run_dir / "checkpoints"
    if root.is_dir():
        for p in root.glob(temporary_sibling(root / "step-*").name):
            shutil.rmtree(p, ignore_errors=True)


def resolve_resume(run_dir: Path, resume: str | None) -> Path | None:
    if resume is None:
        return None
    if resume == "auto":
        found = list_checkpoints(run_dir)
        return found[-1] if found else None
    path = Path(resume).expanduser()
    if not (path / "state.json").is_file():
        raise TrainingError(f"train.resume: '{resume}' is not a checkpoint directory (no state.json)")
    return path


def load_checkpoint(
    path: Path, *, runtime: Runtime, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler, extra=None
) -> TrainState:
    """Restore what :func:`save_checkpoint` wrote (every process calls it); returns the data position."""
    sharded, saved_sharded = shards_state(runtime.accelerator), (path / SHARDED_DIR).is_dir()
    if sharded != saved_sharded:
        raise TrainingError(f"{path}: written by a run whose weights were {'' if saved_sharded else 'not '}sharded; "
                            "resume it with the train.distributed it was written with")
    if sharded:
        _load_sharded(path, runtime)
    else:
        _load_replicated(path, model, optimizer)
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    rng_file = path / f"rng-{runtime.process_index}.pt"
    if rng_file.is_file():
        restore_rng(torch.load(rng_file, weights_only=True))
    if extra is not None:
        extra.load_state_dict(torch.load(path / "task_state.pt", weights_only=True))
    return TrainState(**json.loads((path / "state.json").read_text()))


def _load_sharded(path: Path, runtime: Runtime) -> None:
    """Every process reads its shards of the weights and optimizer state (``accelerator.load_state``)."""
    from torch.distributed.checkpoint.api import CheckpointException

    try:
        runtime.accelerator.load_state(str(path / SHARDED_DIR))
    except (CheckpointException, RuntimeError, ValueError, KeyError) as e:  # torch.distributed.checkpoint's reports
        if isinstance(e, CheckpointException) and e.failures:  # one (exception, traceback) per rank; the first says it
            e = next(iter(e.failures.values()))[0]
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise TrainingError(f"{path}: its sharded state does not fit this model ({first[:200]}); "
                            "was the recipe changed?") from None


def _load_replicated(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    saved = load_file(str(path / "trainable.safetensors"))
    weights = _renamed(saved)
    names_file = path / "optimizer_params.json"
    order = optimizer_param_names(model, optimizer)
    if names_file.is_file() and json.loads(names_file.read_text()) != order:
        raise TrainingError(f"{path}: the checkpoint's optimizer state belongs to other parameters than this "
                            "model trains; was the recipe changed?")
    if not names_file.is_file() and list(weights) != list(saved):
        raise TrainingError(f"{path}: this multimodal checkpoint was written before media branches; its optimizer "
                            "state does not map onto the branches' parameters, so it cannot be resumed. Start the "
                            "run again (its final/ models, once written, still load)")
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in weights]
    unknown = [n for n in weights if n not in params]
    if missing or unknown:
        raise TrainingError(
            f"{path}: checkpoint does not match the model ({len(missing)} trainable tensors missing, "
            f"{len(unknown)} unknown, e.g. {(missing or unknown)[0]}); was the recipe changed?"
        )
    with torch.no_grad():
        for name, tensor in weights.items():
            params[name].copy_(tensor)
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))


def optimizer_param_names(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """The names of the optimizer's parameters in the order of its state (how a saved state maps back)."""
    names = {id(p): n for n, p in model.named_parameters()}
    return [names.get(id(p), "?") for group in optimizer.param_groups for p in group["params"]]


_LEGACY_PARTS = {"lm.encoder.": "lm.branches.image.encoder.", "lm.connector.": "lm.branches.image.connector."}
"""Parameter names of multimodal checkpoints saved before branches existed (one image encoder + connector)."""


def _renamed(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for name, tensor in weights.items():
        for old, new in _LEGACY_PARTS.items():
            if name.startswith(old):
                name = new + name.removeprefix(old)
        out[name] = tensor
    return out
