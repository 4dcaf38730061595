"""The training loop, for any task, top to bottom in one place.

    runtime -> task.setup (model, objective, rows, collate, final/ writer) -> update rule + schedule
            -> (resume) -> loop: accumulate, clip, step, log, eval, save -> final/

Everything a run needs comes from the validated recipe; nothing is read from
the environment. The loss is the sum of per-target losses divided by the
number of targets in the whole accumulation window (all processes), so
accumulation and packing do not change what a target weighs (a token for SFT,
a sample for a diffusion task). The task is chosen by the recipe's ``task``
key (``mmtune.training.tasks.TASKS``); this file knows no task.
"""

from __future__ import annotations

import json
import logging
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from mmtune.config.loader import dump_recipe
from mmtune.config.schema import Recipe
from mmtune.data.loader import BatchProblems, MicroBatchKey, micro_batch_stream
from mmtune.errors import DataError, TrainingError
from mmtune.training.checkpoint import (
    TrainState,
    list_checkpoints,
    load_checkpoint,
    remove_stale_temporaries,
    resolve_resume,
    rng_snapshot,
    save_checkpoint,
)
from mmtune.training.gathered import gathered_weights
from mmtune.training.group_losses import GroupLosses
from mmtune.training.metrics import MetricsLogger, peak_flops, setup_run_logging
from mmtune.training.schedule import lr_lambda
from mmtune.training.setup import fill_deepspeed_config, start_runtime
from mmtune.training.tasks import TASKS
from mmtune.training.update_rules import build_update_rule

log = logging.getLogger("mmtune")


@dataclass
class RunResult:
    run_dir: Path
    steps: int
    final_loss: float | None
    final_dir: Path
    is_main: bool = True
    """False on the other processes of a multi-process run (only the main one reports)."""


def micro_batch_order(num_rows: int, micro_batch_size: int, *, seed: int, epoch: int, shuffle: bool) -> list[np.ndarray]:
    """The rows of every micro-batch of ``epoch``: a pure function of (seed, epoch), so resume is exact."""
    order = np.random.default_rng([seed, epoch]).permutation(num_rows) if shuffle else np.arange(num_rows)
    return [order[i : i + micro_batch_size] for i in range(0, num_rows, micro_batch_size)]


def train(recipe: Recipe) -> RunResult:
    from accelerate.utils import set_seed

    # ---- setup -------------------------------------------------------------------------
    tc = recipe.train
    run_dir = Path(recipe.output_dir)
    rt = start_runtime(tc)
    if rt.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(dump_recipe(recipe))
        remove_stale_temporaries(run_dir)
    setup_run_logging(run_dir if rt.is_main else None, quiet=not rt.is_main)
    set_seed(tc.seed)
    log.info("run directory: %s (task %s, device %s, %d process(es), mixed precision %s)",
             run_dir, recipe.task, rt.device, rt.num_processes, rt.mixed_precision)

    # ---- the task: model, objective, data ------------------------------------------------
    task = TASKS[recipe.task].setup(recipe, rt)
    rows, problems = task.rows, BatchProblems(task.on_bad_sample)
    micro_per_epoch = math.ceil(len(rows) / tc.micro_batch_size)
    micro_per_step = tc.grad_accum_steps * rt.num_processes
    steps_per_epoch = math.ceil(micro_per_epoch / micro_per_step)
    max_steps = tc.max_steps or math.ceil(tc.epochs * steps_per_epoch)
    if micro_per_epoch < micro_per_step and rt.num_processes > 1:
        log.warning("an epoch has %d micro-batches, fewer than one optimizer step needs (%d); batches repeat",
                    micro_per_epoch, micro_per_step)

    # ---- update rule and schedule --------------------------------------------------------
    objective = task.objective
    update = build_update_rule(task, tc, rt)  # AdamW after backward, or LOMO's update inside it (method lomo)
    warmup = tc.warmup_steps if tc.warmup_steps is not None else int(round(tc.warmup_ratio * max_steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        update.optimizer, lr_lambda(tc.scheduler, warmup=warmup, total=max_steps, min_ratio=tc.min_lr_ratio,
                             start_ratio=tc.warmup_start_ratio)
    )
    fill_deepspeed_config(rt, tc)
    model = update.prepare(objective)
    optimizer = update.optimizer  # as prepared: what checkpoints save and resume restores
    if tc.compile:
        model = torch.compile(model)

    # ---- resume -------------------------------------------------------------------------
    state = TrainState(step=0, epoch=0, micro_batch=0, targets_seen=0)
    resume_from = resolve_resume(run_dir, tc.resume)
    if resume_from is not None:
        state = load_checkpoint(resume_from, runtime=rt, model=objective, optimizer=optimizer, scheduler=scheduler,
                                extra=task.extra_state)
        log.info("resumed from %s at step %d (epoch %d, micro-batch %d)",
                 resume_from, state.step, state.epoch, state.micro_batch)
    elif tc.resume == "auto":
        log.info("train.resume=auto: no checkpoint in %s, starting fresh", run_dir)

    def accumulation_windows():
        """Yield the micro-batches of each optimizer step, ``(epoch, index, rows)``, from the saved position.

        With one process an epoch's last window may be shorter, so every sample
        is trained once per epoch (the weighted loss stays exact). With several
        processes a window never runs short (a process without a batch would
        stall the others); it continues into the next epoch instead.
        """
        epoch, index = state.epoch, state.micro_batch
        window = []
        while True:
            order = micro_batch_order(len(rows), tc.micro_batch_size, seed=tc.seed, epoch=epoch, shuffle=task.shuffle)
            for i in range(index, len(order)):
                window.append((epoch, i, order[i]))
                if len(window) == micro_per_step:
                    yield window
                    window = []
            if window and rt.num_processes == 1:
                yield window
                window = []
            epoch, index = epoch + 1, 0

    @torch.no_grad()
    def evaluate() -> dict[str, float]:
        """``eval_loss`` (and ``eval_loss/<group>``); empty without validation rows or when all were skipped."""
        if not task.val_rows:
            return {}
        model.eval()
        total, count = torch.zeros((), device=rt.device), torch.zeros((), device=rt.device)
        per_group = GroupLosses(task.loss_groups, rt.device)
        shard = task.val_rows[rt.process_index :: rt.num_processes]
        for i in range(0, len(shard), tc.micro_batch_size):
            batch = task.val_collate(shard[i : i + tc.micro_batch_size])
            problems.check(batch)
            loss_sum, n, *extra = model(batch.to(rt.device))
            total += loss_sum.float()
            count += n
            per_group.add(extra, batch)
        model.train()
        total, count = rt.accelerator.reduce(total, "sum"), rt.accelerator.reduce(count, "sum")
        groups = per_group.take(rt.accelerator, "eval_loss")
        return {"eval_loss": float(total / count), **groups} if count > 0 else {}

    def micro_batch_keys():
        """This process's share of every window, marked so the loop knows where a window ends."""
        for window in accumulation_windows():
            mine = window[rt.process_index :: rt.num_processes]
            end = (window[-1][0], window[-1][1])
            for j, (epoch, index, batch_rows) in enumerate(mine):
                yield MicroBatchKey(epoch, index, tuple(int(r) for r in batch_rows), j == len(mine) - 1, end)

    def save(step_state: TrainState, rng: dict) -> Path:
        """Every process takes part (sharded state is written by all); the main one writes the rest."""
        return save_checkpoint(run_dir, step_state, runtime=rt, model=objective, optimizer=optimizer,
                               scheduler=scheduler, rng=rng, keep=tc.keep_checkpoints, extra=task.extra_state)

    # ---- loop ---------------------------------------------------------------------------
    metrics = MetricsLogger.open(recipe, run_dir if rt.is_main else None)  # trackers on the main process only
    flops_peak = peak_flops(rt.device)
    stream = micro_batch_stream(micro_batch_keys(), rows, task.collate, num_workers=task.num_workers)
    bar = tqdm(total=max_steps, initial=state.step, desc="train", unit="step",
               disable=not (tc.progress and rt.is_main), dynamic_ncols=True)
    last_checkpoint = next(reversed(list_checkpoints(run_dir)), None)
    rng_after_step = rng_snapshot()
    window_start, window_targets, data_wait = time.perf_counter(), 0, 0.0
    last_loss, empty_windows = None, 0
    task_losses = GroupLosses(task.loss_groups, rt.device)  # task_loss/<task> per logged window
    model.train()
    try:
        while state.step < max_steps:
            # Fetch the whole accumulation window first: its target count is the divisor.
            fetch_start = time.perf_counter()
            batches = []
            while True:
                key, batch = next(stream)
                problems.check(batch)
                batches.append(batch)
                if key.ends_window:
                    break
            data_wait += time.perf_counter() - fetch_start
            local_targets = torch.tensor(sum(b.num_targets for b in batches), device=rt.device)
            total_targets = int(rt.accelerator.reduce(local_targets, "sum"))
            if total_targets == 0:  # every sample of the window was skipped: nothing to learn from
                empty_windows += 1
                if empty_windows >= steps_per_epoch:
                    raise DataError(f"no trainable sample in {empty_windows} windows in a row (an epoch's worth): "
                                    f"every sample was skipped while building batches ({'; '.join(problems.lines())})",
                                    reason="empty dataset")
                log.warning("a window of micro-batches had no target left (its samples were skipped); no update")
                continue
            empty_windows = 0
            loss_total = torch.zeros((), device=rt.device)
            for i, batch in enumerate(batches):
                last = i == len(batches) - 1
                with rt.accelerator.no_sync(model) if not last else nullcontext():
                    loss_sum, _, *extra = model(batch.to(rt.device))
                    # DDP averages gradients over processes; scale so the result is sum / total_targets.
                    update.backward(loss_sum * rt.num_processes / total_targets, ends_window=last)
                loss_total += loss_sum.detach().float()
                task_losses.add(extra, batch)
            loss = float(rt.accelerator.reduce(loss_total, "sum")) / total_targets
            if not math.isfinite(loss):
                raise TrainingError(
                    f"loss is {loss} at step {state.step + 1}; stopped before updating the weights. "
                    f"Last good checkpoint: {last_checkpoint or 'none'}. Lower train.lr, check the data, "
                    "or use bf16 instead of fp16."
                )
            grad_norm = update.step()  # clip and step, or (LOMO) nothing left but the norm
            scheduler.step()
            if task.with_gradients is not None:  # e.g. AdaLoRA's rank allocation, which reads the gradients
                task.with_gradients(state.step, max_steps)
            optimizer.zero_grad(set_to_none=True)
            if task.after_step is not None:
                task.after_step()

            last_epoch, last_index = key.window_end
            state = TrainState(state.step + 1, last_epoch, last_index + 1, state.targets_seen + total_targets)
            rng_after_step = rng_snapshot()
            last_loss = loss
            window_targets += total_targets
            bar.update()

            if state.step % tc.log_every == 0 or state.step == max_steps:
                elapsed = time.perf_counter() - window_start
                per_s = window_targets / max(elapsed, 1e-9)
                record = {
                    "step": state.step,
                    "loss": loss,
                    "lr": scheduler.get_last_lr()[0],
                    "grad_norm": float(grad_norm),
                    task.throughput_key: per_s,
                    "data_wait": data_wait / max(elapsed, 1e-9),
                    "targets_seen": state.targets_seen,
                    "epoch": state.epoch + state.micro_batch / micro_per_epoch,
                }
                if flops_peak and task.flops_per_target:
                    record["mfu"] = task.flops_per_target * per_s / flops_peak
                record.update(task_losses.take(rt.accelerator, "task_loss"))
                metrics.log(record)
                bar.set_postfix(loss=f"{loss:.4f}", per_s=f"{per_s:,.0f}")
                window_start, window_targets, data_wait = time.perf_counter(), 0, 0.0
            if tc.eval_every and (state.step % tc.eval_every == 0 or state.step == max_steps):
                val = evaluate()
                if val:
                    metrics.log({"step": state.step, **val})
                    log.info("step %d: eval loss %.4f", state.step, val["eval_loss"])
                window_start = time.perf_counter()  # throughput counts training time only
            if tc.save_every and state.step % tc.save_every == 0 and state.step < max_steps:
                last_checkpoint = save(state, rng_after_step)
                window_start = time.perf_counter()
        metrics.log_final(state.step, {"loss": last_loss, "targets_seen": state.targets_seen})
    except KeyboardInterrupt:
        bar.close()
        if state.step > 0 and (last_checkpoint is None or not last_checkpoint.name.endswith(f"-{state.step}")):
            path = save(state, rng_after_step)
            log.warning("interrupted: saved %s; continue with train.resume=auto", path)
        raise
    finally:
        bar.close()
        metrics.close()

    # ---- final model ------------------------------------------------------------------------
    final_dir = run_dir / "final"
    rt.accelerator.wait_for_everyone()
    every_process = rt.gather(problems)  # a collective: every process takes part
    if rt.is_main:
        problems.merge(every_process[1:])
        for line in problems.lines():
            log.warning("data: %s", line)
    with gathered_weights(rt.accelerator, model) as trained:  # sharded weights: gathered by every process
        if rt.is_main:
            task.save_final(final_dir, trained)
    if rt.is_main:
        (run_dir / "summary.json").write_text(json.dumps({
            "steps": state.step, "final_loss": last_loss, "targets_seen": state.targets_seen,
            "skipped_while_batching": problems.counts(), **task.summary,
        }, indent=2, default=str))
        log.info("saved %s", final_dir)
    return RunResult(run_dir, state.step, last_loss, final_dir, rt.is_main)
