"""The fine-tuning recipe: the whole training loop, top to bottom, in one place.

    setup -> tokenizer -> model (+ vision) + method -> data -> optimizer + schedule
          -> (resume) -> loop: accumulate, clip, step, log, eval, save -> final/

Everything a run needs comes from the validated :class:`Recipe`; nothing is
read from the environment. Loss is the sum of token losses divided by the
number of trained tokens in the whole accumulation window (all processes), so
accumulation and packing do not change what a token weighs.
"""

from __future__ import annotations

import json
from contextlib import nullcontext
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from mmtune.config.loader import dump_recipe
from mmtune.config.schema import Recipe
from mmtune.data.loader import MicroBatchKey, micro_batch_stream
from mmtune.data.packing import Collator, make_rows, packing_utilisation
from mmtune.data.pipeline import build_text_data, format_reports
from mmtune.data.templates import install_template
from mmtune.errors import TrainingError
from mmtune.models.finetuned import save_final
from mmtune.models.loading import load_causal_lm, load_tokenizer, resolve_attn
from mmtune.training.checkpoint import (
    TrainState,
    list_checkpoints,
    load_checkpoint,
    remove_stale_temporaries,
    resolve_resume,
    rng_snapshot,
    save_checkpoint,
)
from mmtune.training.methods import (
    apply_method,
    enable_activation_checkpointing,
    param_groups,
    qlora_quantization_config,
    trainable_table,
)
from mmtune.training.metrics import MetricsLogger, peak_flops, setup_run_logging
from mmtune.training.objective import CausalLMObjective
from mmtune.training.schedule import lr_lambda
from mmtune.vision.build import build_multimodal, set_component_trainable
from mmtune.vision.images import IMAGE_PLACEHOLDER_ID

log = logging.getLogger("mmtune")


@dataclass
class RunResult:
    run_dir: Path
    steps: int
    final_loss: float | None
    final_dir: Path


def micro_batch_order(num_rows: int, micro_batch_size: int, *, seed: int, epoch: int, shuffle: bool) -> list[np.ndarray]:
    """The rows of every micro-batch of ``epoch``: a pure function of (seed, epoch), so resume is exact."""
    order = np.random.default_rng([seed, epoch]).permutation(num_rows) if shuffle else np.arange(num_rows)
    return [order[i : i + micro_batch_size] for i in range(0, num_rows, micro_batch_size)]


def train(recipe: Recipe) -> RunResult:
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import set_seed

    # ---- setup -------------------------------------------------------------------------
    cfg, tc = recipe, recipe.train
    run_dir = Path(cfg.output_dir)
    mixed = tc.mixed_precision
    if mixed == "auto":
        mixed = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    # accelerate keeps one process-wide state and refuses a second Accelerator with another
    # precision; a notebook or script may train several recipes in one process, so start each
    # run from a clean accelerator state (the distributed process state is kept).
    AcceleratorState._reset_state(reset_partial_state=False)
    accelerator = Accelerator(mixed_precision=mixed, cpu=not torch.cuda.is_available())
    device_type = accelerator.device.type
    is_main = accelerator.is_main_process
    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(dump_recipe(cfg))
        remove_stale_temporaries(run_dir)
    setup_run_logging(run_dir if is_main else None)
    set_seed(tc.seed)
    log.info("run directory: %s (device %s, %d process(es), mixed precision %s)",
             run_dir, accelerator.device, accelerator.num_processes, mixed)

    # ---- tokenizer, model and method --------------------------------------------------
    tokenizer = load_tokenizer(cfg.model)
    install_template(tokenizer, cfg.data.template)
    quant = qlora_quantization_config(device_type) if cfg.method.name == "qlora" else None
    lm = load_causal_lm(cfg.model, device_type=device_type, quantization_config=quant)
    if tc.gradient_checkpointing:
        enable_activation_checkpointing(lm)
    lm.config.use_cache = False
    lm = apply_method(lm, cfg.method)
    log.info("llm: %s", cfg.method.name)
    vision = cfg.model.vision
    if vision is not None:
        lm = build_multimodal(vision, lm)
        set_component_trainable(lm.encoder, cfg.method.encoder, cfg.method.lora, "encoder")
        set_component_trainable(lm.connector, cfg.method.connector, cfg.method.lora, "connector")
    image_tokens = lm.num_image_tokens if vision is not None else 0
    objective = CausalLMObjective(lm)

    # ---- data ---------------------------------------------------------------------------
    with accelerator.main_process_first():  # the main process tokenizes and fills the cache
        data = build_text_data(tokenizer, cfg.data, seed=tc.seed, image_tokens=image_tokens)
    for line in format_reports(data.reports):
        log.info("data: %s", line)
    lengths = data.train.lengths()
    rows = make_rows(lengths, cfg.data.max_length, cfg.data.packing)
    val_rows = make_rows(data.val.lengths(), cfg.data.max_length, cfg.data.packing)
    use_varlen = resolve_attn(cfg.model.attn_implementation, device_type) == "flash_attention_2"
    transform = lm.transform if vision is not None else None
    collate = Collator(data.train, pad_id=tokenizer.pad_token_id, block_mask=not use_varlen, image_transform=transform)
    val_collate = Collator(data.val, pad_id=tokenizer.pad_token_id, block_mask=not use_varlen, image_transform=transform)
    utilisation = packing_utilisation(rows, lengths, cfg.data.max_length) if cfg.data.packing else None
    log.info("train: %d samples in %d rows%s; val: %d samples", len(data.train), len(rows),
             f" (packing utilisation {utilisation:.1%})" if utilisation is not None else "", len(data.val))

    micro_per_epoch = math.ceil(len(rows) / tc.micro_batch_size)
    micro_per_step = tc.grad_accum_steps * accelerator.num_processes
    steps_per_epoch = math.ceil(micro_per_epoch / micro_per_step)
    max_steps = tc.max_steps or math.ceil(tc.epochs * steps_per_epoch)
    if micro_per_epoch < micro_per_step and accelerator.num_processes > 1:
        log.warning("an epoch has %d micro-batches, fewer than one optimizer step needs (%d); batches repeat",
                    micro_per_epoch, micro_per_step)

    first_ids = np.array(data.train[0][0][:64])  # a copy: cached arrays are read-only
    probe = torch.tensor(first_ids[first_ids != IMAGE_PLACEHOLDER_ID][:32], dtype=torch.long)[None]
    if not objective.check_selective_head(probe.to(next(objective.parameters()).device)):
        log.warning("this model post-processes logits in its forward; training through its full forward "
                    "(logits at every position: slower, more memory)")
    for line in trainable_table(lm):
        log.info("params: %s", line)
    groups, group_summary = param_groups(objective, cfg.method, tc, multimodal=vision is not None)
    for g in group_summary:
        log.info("optimizer group %s: %s params, lr %g, weight decay %g", g.name, f"{g.params:,}", g.lr, g.weight_decay)
    optimizer = torch.optim.AdamW(groups, lr=tc.lr, betas=tc.betas, fused=True)  # fused kernels exist for CPU and CUDA
    warmup = tc.warmup_steps if tc.warmup_steps is not None else int(round(tc.warmup_ratio * max_steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(tc.scheduler, warmup=warmup, total=max_steps, min_ratio=tc.min_lr_ratio)
    )
    if accelerator.state.deepspeed_plugin is not None:  # DeepSpeed cannot infer these without a DataLoader
        ds = accelerator.state.deepspeed_plugin.deepspeed_config
        ds["train_micro_batch_size_per_gpu"] = tc.micro_batch_size
        ds["gradient_accumulation_steps"] = tc.grad_accum_steps
    model, optimizer = accelerator.prepare(objective, optimizer)
    if tc.compile:
        model = torch.compile(model)
    n_params = sum(p.numel() for p in objective.parameters())
    trainable = [p for p in objective.parameters() if p.requires_grad]

    # ---- resume -------------------------------------------------------------------------
    state = TrainState(step=0, epoch=0, micro_batch=0, targets_seen=0)
    resume_from = resolve_resume(run_dir, tc.resume)
    if resume_from is not None:
        state = load_checkpoint(resume_from, model=objective, optimizer=optimizer, scheduler=scheduler,
                                process_index=accelerator.process_index)
        log.info("resumed from %s at step %d (epoch %d, micro-batch %d)",
                 resume_from, state.step, state.epoch, state.micro_batch)
    elif tc.resume == "auto":
        log.info("train.resume=auto: no checkpoint in %s, starting fresh", run_dir)

    def accumulation_windows():
        """Yield the micro-batches of each optimizer step, ``(epoch, index, rows)``, from the saved position.

        With one process an epoch's last window may be shorter, so every sample
        is trained once per epoch (the token-weighted loss stays exact). With
        several processes a window never runs short (a process without a batch
        would stall the others); it continues into the next epoch instead.
        """
        epoch, index = state.epoch, state.micro_batch
        window = []
        while True:
            order = micro_batch_order(len(rows), tc.micro_batch_size, seed=tc.seed, epoch=epoch, shuffle=cfg.data.shuffle)
            for i in range(index, len(order)):
                window.append((epoch, i, order[i]))
                if len(window) == micro_per_step:
                    yield window
                    window = []
            if window and accelerator.num_processes == 1:
                yield window
                window = []
            epoch, index = epoch + 1, 0

    @torch.no_grad()
    def evaluate() -> float | None:
        if not val_rows:
            return None
        model.eval()
        total, count = torch.zeros((), device=accelerator.device), torch.zeros((), device=accelerator.device)
        shard = val_rows[accelerator.process_index :: accelerator.num_processes]
        for i in range(0, len(shard), tc.micro_batch_size):
            loss_sum, n = model(val_collate(shard[i : i + tc.micro_batch_size]).to(accelerator.device))
            total += loss_sum.float()
            count += n
        model.train()
        total, count = accelerator.reduce(total, "sum"), accelerator.reduce(count, "sum")
        return float(total / count.clamp(min=1))

    def micro_batch_keys():
        """This process's share of every window, marked so the loop knows where a window ends."""
        for window in accumulation_windows():
            mine = window[accelerator.process_index :: accelerator.num_processes]
            end = (window[-1][0], window[-1][1])
            for j, (epoch, index, batch_rows) in enumerate(mine):
                yield MicroBatchKey(epoch, index, tuple(int(r) for r in batch_rows), j == len(mine) - 1, end)

    # ---- loop ---------------------------------------------------------------------------
    metrics = MetricsLogger(run_dir if is_main else None, tensorboard=tc.tensorboard)
    flops_peak = peak_flops(accelerator.device)
    stream = micro_batch_stream(micro_batch_keys(), rows, collate, num_workers=cfg.data.num_workers)
    bar = tqdm(total=max_steps, initial=state.step, desc="train", unit="step", disable=not (tc.progress and is_main),
               dynamic_ncols=True)
    last_checkpoint = next(reversed(list_checkpoints(run_dir)), None)
    rng_after_step = rng_snapshot()
    window_start, window_targets, data_wait = time.perf_counter(), 0, 0.0
    last_loss = None
    model.train()
    try:
        while state.step < max_steps:
            # Fetch the whole accumulation window first: its trained-token count is the divisor.
            fetch_start = time.perf_counter()
            batches = []
            while True:
                key, batch = next(stream)
                batches.append(batch)
                if key.ends_window:
                    break
            data_wait += time.perf_counter() - fetch_start
            local_targets = torch.tensor(sum(b.num_targets for b in batches), device=accelerator.device)
            total_targets = int(accelerator.reduce(local_targets, "sum"))
            loss_total = torch.zeros((), device=accelerator.device)
            for i, batch in enumerate(batches):
                last = i == len(batches) - 1
                with accelerator.no_sync(model) if not last else nullcontext():
                    loss_sum, _ = model(batch.to(accelerator.device))
                    # DDP averages gradients over processes; scale so the result is sum / total_targets.
                    accelerator.backward(loss_sum * accelerator.num_processes / total_targets)
                loss_total += loss_sum.detach().float()
            loss = float(accelerator.reduce(loss_total, "sum")) / total_targets
            if not math.isfinite(loss):
                raise TrainingError(
                    f"loss is {loss} at step {state.step + 1}; stopped before updating the weights. "
                    f"Last good checkpoint: {last_checkpoint or 'none'}. Lower train.lr, check the data, "
                    "or use bf16 instead of fp16."
                )
            grad_norm = accelerator.clip_grad_norm_(trainable, tc.max_grad_norm or float("inf"))
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)

            last_epoch, last_index = key.window_end
            state = TrainState(state.step + 1, last_epoch, last_index + 1, state.targets_seen + total_targets)
            rng_after_step = rng_snapshot()
            last_loss = loss
            window_targets += total_targets
            bar.update()

            if state.step % tc.log_every == 0 or state.step == max_steps:
                elapsed = time.perf_counter() - window_start
                tps = window_targets / max(elapsed, 1e-9)
                record = {
                    "step": state.step,
                    "loss": loss,
                    "lr": scheduler.get_last_lr()[0],
                    "grad_norm": float(grad_norm),
                    "tokens_per_s": tps,
                    "data_wait": data_wait / max(elapsed, 1e-9),
                    "targets_seen": state.targets_seen,
                    "epoch": state.epoch + state.micro_batch / micro_per_epoch,
                }
                if flops_peak:
                    record["mfu"] = 6 * n_params * tps / flops_peak
                metrics.log(record)
                bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tps:,.0f}")
                window_start, window_targets, data_wait = time.perf_counter(), 0, 0.0
            if tc.eval_every and (state.step % tc.eval_every == 0 or state.step == max_steps):
                val = evaluate()
                if val is not None:
                    metrics.log({"step": state.step, "eval_loss": val})
                    log.info("step %d: eval loss %.4f", state.step, val)
                window_start = time.perf_counter()  # throughput counts training time only
            if tc.save_every and state.step % tc.save_every == 0 and state.step < max_steps:
                last_checkpoint = _save(accelerator, run_dir, state, objective, optimizer, scheduler, rng_after_step, tc.keep_checkpoints)
                window_start = time.perf_counter()
    except KeyboardInterrupt:
        bar.close()
        if state.step > 0 and (last_checkpoint is None or not last_checkpoint.name.endswith(f"-{state.step}")):
            path = _save(accelerator, run_dir, state, objective, optimizer, scheduler, rng_after_step, tc.keep_checkpoints)
            log.warning("interrupted: saved %s; continue with train.resume=auto", path)
        raise
    finally:
        bar.close()
        metrics.close()

    # ---- final model ------------------------------------------------------------------------
    final_dir = run_dir / "final"
    accelerator.wait_for_everyone()
    if is_main:
        save_final(final_dir, accelerator.unwrap_model(model).lm, tokenizer, base=cfg.model, method=cfg.method.name,
                   encoder_trained=cfg.method.encoder.trainable != "frozen")
        (run_dir / "summary.json").write_text(json.dumps({
            "steps": state.step, "final_loss": last_loss, "targets_seen": state.targets_seen,
            "packing_utilisation": utilisation, "data": [r.__dict__ for r in data.reports],
        }, indent=2, default=str))
        log.info("saved %s", final_dir)
    return RunResult(run_dir, state.step, last_loss, final_dir)


def _save(accelerator, run_dir, state, objective, optimizer, scheduler, rng, keep) -> Path:
    accelerator.wait_for_everyone()
    path = save_checkpoint(run_dir, state, model=objective, optimizer=optimizer, scheduler=scheduler, rng=rng,
                           process_index=0, keep=keep) if accelerator.is_main_process else run_dir / "checkpoints" / f"step-{state.step}"
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        save_checkpoint(run_dir, state, model=objective, optimizer=optimizer, scheduler=scheduler, rng=rng,
                        process_index=accelerator.process_index)
    return path
