"""TRL's ``SFTTrainer`` as the stronger text SFT baseline of ``bench_text_sft.py``, and the packing leak check.

TRL packs as well (``packing=True``, best-fit decreasing: whole samples into rows
of ``max_length``, the rows of a batch flattened into one padding-free sequence
whose ``position_ids`` restart at every sample), or trains padding-free without
packing (``padding_free=True``: the samples of a batch flattened, no pad token).
Both are fed exactly mmtune's token ids, with ``labels`` = id where mmtune
trains the token, else -100 (TRL keeps a pre-tokenized ``labels`` column as is).

:func:`packed_vs_unpacked` answers "do packed samples attend to each other?"
for either side: the summed loss of one packed batch against the same samples
run one by one, at initialisation (LoRA's B is zero, so this is the base model),
in eval mode (no dropout). Equal (to float32 rounding) means no sample sees
another; a difference is cross-sample attention.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from common import spread, step_timer, training_arguments

TRL_VARIANTS = {
    "packed": {"packing": True, "packing_strategy": "bfd"},
    "padding_free": {"packing": False, "padding_free": True},
}
"""The TRL sides: ``packed`` (its own BFD packing, which turns padding-free on) and ``padding_free`` alone."""


def trl_config(out_dir: Path, variant: str, *, batch_size: int, max_length: int, lr: float, seed: int):
    """``SFTConfig`` equal to the ``Trainer`` baseline's arguments (``common.training_arguments``), with TRL's own
    defaults that differ from them undone (gradient checkpointing on, bf16) and the variant's packing keys."""
    from trl import SFTConfig

    base = training_arguments(out_dir, batch_size=batch_size, workers=0, lr=lr, seed=seed, logging_steps=10**9)
    keys = ("output_dir", "per_device_train_batch_size", "gradient_accumulation_steps", "num_train_epochs",
            "learning_rate", "lr_scheduler_type", "warmup_steps", "optim", "weight_decay", "adam_beta1", "adam_beta2",
            "max_grad_norm", "logging_steps", "report_to", "save_strategy", "use_cpu", "bf16", "fp16",
            "dataloader_num_workers", "dataloader_pin_memory", "disable_tqdm", "seed")
    return SFTConfig(
        **{k: getattr(base, k) for k in keys},
        gradient_checkpointing=False,
        # padding-free without packing enforces no max_length (the ids are mmtune's, already truncated to it)
        max_length=max_length if TRL_VARIANTS[variant]["packing"] else None,
        shuffle_dataset=False,  # the Trainer's random sampler shuffles, as on the other sides
        **TRL_VARIANTS[variant],
    )


def lora_model(model_dir: Path, lora: dict, seed: int):
    """The model both sides start from: fp32, SDPA, peft LoRA as the recipe gives it, seeded."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, set_seed

    set_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32, attn_implementation="sdpa",
                                                 use_safetensors=True)
    model.config.use_cache = False
    return get_peft_model(model, LoraConfig(r=lora["rank"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
                                            target_modules=lora["target_modules"], task_type="CAUSAL_LM"))


def trl_trainer(model_dir: Path, tokenizer, features: list[dict], out_dir: Path, variant: str, *, batch_size: int,
                max_length: int, lora: dict, lr: float, seed: int):
    """An ``SFTTrainer`` that counts each step's trained targets (``.targets``) on mmtune's tokens."""
    from datasets import Dataset
    from transformers.trainer_callback import PrinterCallback
    from trl import SFTTrainer

    class CountingSFTTrainer(SFTTrainer):
        """Notes each step's trained targets: labels shifted by one, as the loss reads them."""

        targets: list[int] = []

        def training_step(self, model, inputs, num_items_in_batch=None):
            self.targets.append(int((inputs["labels"][:, 1:] != -100).sum()))
            return super().training_step(model, inputs, num_items_in_batch)

    dataset = Dataset.from_list([{"input_ids": f["input_ids"], "labels": f["labels"]} for f in features])
    args = trl_config(out_dir, variant, batch_size=batch_size, max_length=max_length, lr=lr, seed=seed)
    trainer = CountingSFTTrainer(model=lora_model(model_dir, lora, seed), args=args, train_dataset=dataset,
                                 processing_class=tokenizer)
    trainer.targets = []
    trainer.remove_callback(PrinterCallback)
    return trainer


def run_trl(trainer) -> dict:
    """Train one epoch; the same figures as the ``Trainer`` baseline (step 1 excluded as warm-up)."""
    timer = step_timer()
    trainer.add_callback(timer)
    rows = len(trainer.train_dataset)
    result = trainer.train()
    steps = len(timer.end)
    targets = trainer.targets[:steps]
    e2e = timer.end[-1] - timer.end[0] if steps > 1 else float("nan")
    compute = sum(e - b for b, e in zip(timer.begin[1:], timer.end[1:]))
    timed = sum(targets[1:])
    return {
        "rows": rows,
        "steps": steps,
        "timed_steps": max(0, steps - 1),
        "targets_total": sum(targets),
        "targets_timed": timed,
        "seconds_timed": e2e,
        "seconds_timed_compute_only": compute,
        "tok_s": timed / e2e if e2e > 0 else float("nan"),
        "tok_s_compute_only": timed / compute if compute > 0 else float("nan"),
        "step1_seconds": (timer.end[0] - timer.begin[0]) if steps else None,
        "final_loss": result.training_loss,
        "step_tok_s": spread([t / (timer.end[i + 1] - timer.end[i]) for i, t in enumerate(targets[1:])]),
    }


# --------------------------------------------------------------------------- the packing leak check


def _loss_sum(model, input_ids: torch.Tensor, labels: torch.Tensor, **kwargs) -> tuple[float, int]:
    """Summed next-token cross-entropy of an HF causal LM (labels shifted by one, -100 ignored)."""
    logits = model(input_ids=input_ids, use_cache=False, **kwargs).logits[:, :-1].float()
    targets = labels[:, 1:]
    keep = targets != -100
    return float(F.cross_entropy(logits[keep], targets[keep], reduction="sum")), int(keep.sum())


@torch.no_grad()
def trl_packed_vs_unpacked(trainer, rows: int) -> dict:
    """TRL's first ``rows`` training rows as its collator batches them, against each sample alone."""
    model = trainer.model.eval()
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(rows)])
    extra = {k: v for k, v in batch.items() if k not in ("input_ids", "labels")}
    packed, n = _loss_sum(model, batch["input_ids"], batch["labels"], **extra)
    alone = alone_n = 0
    if "position_ids" in batch:  # padding-free: one flattened row, samples start where positions restart
        ids, labels, pos = batch["input_ids"][0], batch["labels"][0], batch["position_ids"][0]
        starts = (pos == 0).nonzero().flatten().tolist() + [len(ids)]
        spans = [(a, b) for a, b in zip(starts[:-1], starts[1:]) if b > a]
        for a, b in spans:
            s, k = _loss_sum(model, ids[None, a:b], labels[None, a:b])
            alone, alone_n = alone + s, alone_n + k
    else:  # padded rows: each row on its own, without its padding
        for r in range(batch["input_ids"].shape[0]):
            keep = batch["attention_mask"][r].bool()
            s, k = _loss_sum(model, batch["input_ids"][r][keep][None], batch["labels"][r][keep][None])
            alone, alone_n = alone + s, alone_n + k
    model.train()
    return _leak_figures(packed, n, alone, alone_n, samples=len(spans) if "position_ids" in batch else rows)


@torch.no_grad()
def mmtune_packed_vs_unpacked(model_dir: Path, view, rows: list[list[int]], pad_id: int, lora: dict,
                              seed: int) -> dict:
    """mmtune's objective on its first packed rows (block-diagonal mask, positions restarting per sample), against
    each sample of them alone."""
    from mmtune.data.packing import Collator
    from mmtune.training.objective import CausalLMObjective

    objective = CausalLMObjective(lora_model(model_dir, lora, seed)).eval()
    collate = Collator(view, pad_id=pad_id, block_mask=True)
    loss, n = objective(collate(rows))
    alone = alone_n = 0
    for i in (i for row in rows for i in row):
        s, k = objective(collate([[i]]))
        alone, alone_n = alone + float(s), alone_n + int(k)
    return _leak_figures(float(loss), int(n), alone, alone_n, samples=sum(len(r) for r in rows))


def _leak_figures(packed: float, n: int, alone: float, alone_n: int, *, samples: int) -> dict:
    return {
        "samples": samples,
        "targets": n,
        "targets_alone": alone_n,
        "loss_packed": packed / max(n, 1),
        "loss_alone": alone / max(alone_n, 1),
        "abs_diff_per_target": abs(packed - alone) / max(n, 1),
    }


def attends_across(check: dict, tol: float = 1e-4) -> bool:
    """Whether a packed batch's loss differs from its samples' alone by more than float32 rounding."""
    return check["targets"] != check["targets_alone"] or check["abs_diff_per_target"] > tol


