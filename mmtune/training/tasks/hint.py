"""``task: hint``: hypernetwork instruction tuning (HINT, Ivison et al. 2023).

    tokenizer + chat template -> LLM + method (frozen | full | lora) -> hypernetwork (instruction encoder,
          parameter generator, hooks on the adapted modules) -> sni data (one task per file, the instruction
          out of the prompt unless hint.fusion) -> packed rows tagged by task -> objective -> final/ writer

A task of its own rather than an SFT option, because what differs is exactly what a task owns: the model
(a hypernetwork beside the LLM), the batches (each carries its tasks' instructions) and ``final/`` (the
hypernetwork, which ``mmtune hint adapt`` turns into one task's peft adapter). Everything else is SFT's:
the tokenized, cached, packed conversation data, :class:`CausalLMObjective` (run with the generated
adapters in place) and the task-agnostic loop with per-task losses.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from torch import nn

from mmtune.config.schema import HintRecipe
from mmtune.data.hint_batches import HintBatch, HintCollate
from mmtune.data.packing import Collator, make_rows, packing_utilisation
from mmtune.data.pipeline import build_conversation_data, format_reports
from mmtune.data.sni import task_instructions, with_instruction_placement
from mmtune.data.templates import install_template
from mmtune.errors import ConfigError
from mmtune.models.hint.hypernetwork import (
    Hypernetwork,
    instruction_token_ids,
    instruction_tokenizer,
    open_instruction_encoder,
)
from mmtune.models.loading import load_tokenizer, resolve_attn
from mmtune.models.open import open_language_model
from mmtune.models.run_outputs import save_final
from mmtune.training.methods import (
    Component,
    apply_component_method,
    apply_method,
    enable_activation_checkpointing,
    logged_param_groups,
    trainable_counts,
)
from mmtune.training.objective import CausalLMObjective
from mmtune.training.setup import Runtime
from mmtune.training.tasks.base import TaskRun

log = logging.getLogger("mmtune")


class HintObjective(nn.Module):
    """Generate the batch's adapters from its instructions, put them in the LLM, and take the LM loss."""

    def __init__(self, lm_objective: CausalLMObjective, hypernetwork: Hypernetwork) -> None:
        super().__init__()
        self.lm_objective = lm_objective
        self.hypernetwork = hypernetwork

    def forward(self, batch: HintBatch):
        adapters = self.hypernetwork(batch.instruction_ids, batch.instruction_mask)
        # Left in place after the forward: activation checkpointing re-runs it inside backward.
        self.hypernetwork.slots.set(adapters, batch.token_slot)
        return self.lm_objective(batch.lm)


def tokenized_instructions(tokenizer, texts: list[str], max_length: int) -> list[np.ndarray]:
    """Each instruction's ids, cut at ``max_length`` (how many were cut is logged)."""
    out, cut = [], 0
    for text in texts:
        ids, was_cut = instruction_token_ids(tokenizer, text, max_length)
        cut += was_cut
        out.append(np.asarray(ids, dtype=np.int64))
    if cut:
        log.warning("hint: %d of %d instructions cut at hint.max_instruction_length=%d tokens", cut, len(texts),
                    max_length)
    return out


class HintTask:
    def setup(self, recipe: HintRecipe, runtime: Runtime) -> TaskRun:
        cfg, tc, hc = recipe, recipe.train, recipe.hint

        block_mask = resolve_attn(cfg.model.attn_implementation, runtime.device_type) != "flash_attention_2"
        if hc.prefix_tokens and not block_mask:
            raise ConfigError("hint.prefix_tokens: generated prefixes need an explicit attention mask (each token sees "
                              "its own task's prefix); flash_attention_2 takes none: use model.attn_implementation: sdpa")

        # ---- tokenizer, LLM and its method ------------------------------------------------
        tokenizer = load_tokenizer(cfg.model)
        install_template(tokenizer, cfg.data.template)
        llm = open_language_model(cfg.model, device_type=runtime.device_type)
        if tc.gradient_checkpointing:
            enable_activation_checkpointing(llm)
        llm.config.use_cache = False
        llm = apply_method(llm, cfg.method)
        components = [Component("llm", llm, cfg.method.name, cfg.method.llm_lr if cfg.method.name != "frozen" else None)]

        # ---- hypernetwork: instruction encoder, generator, hooks ---------------------------
        encoder = open_instruction_encoder(hc.encoder.name) if hc.encoder.name else None
        if encoder is not None:
            apply_component_method(encoder, hc.encoder, cfg.method.lora, "hint.encoder", key="hint.encoder")
            components.append(Component("hint.encoder", encoder, hc.encoder.trainable,
                                        hc.encoder.lr if hc.encoder.trainable != "frozen" else None))
        hypernetwork = Hypernetwork(llm, hc, encoder=encoder)
        components.append(Component("hint.generator", hypernetwork.generator, "full", hc.lr))
        made = [f"{hc.adapter} adapters of rank {hc.rank} on {len(hypernetwork.targets)} modules "
                f"({', '.join(hc.target_modules)})"] if hc.adapter != "none" else []
        made += [f"a prefix of {hc.prefix_tokens} key/values per layer"] if hc.prefix_tokens else []
        log.info("hint: %s, generated from the instruction by %s", " and ".join(made),
                 hc.encoder.name or "the LLM's own pass")
        place_prefix = hypernetwork.place_prefix if hc.prefix_tokens else None
        objective = HintObjective(CausalLMObjective(llm, place_prefix=place_prefix), hypernetwork)

        # ---- data: sni tasks, each instruction tokenized once ------------------------------
        data_cfg = with_instruction_placement(cfg.data, hc.fusion)
        with runtime.main_process_first():
            data = build_conversation_data(tokenizer, data_cfg, seed=tc.seed)
        for line in format_reports(data.reports):
            log.info("data: %s", line)
        instructions = task_instructions(data_cfg.datasets)
        tasks = data.train.tasks
        encoder_tokenizer = instruction_tokenizer(hc, tokenizer)
        instruction_ids = tokenized_instructions(encoder_tokenizer, [instructions[t] for t in tasks],
                                                 hc.max_instruction_length)
        log.info("hint: %d tasks; instructions of %.0f tokens on average (%s in the prompt too)", len(tasks),
                 float(np.mean([len(ids) for ids in instruction_ids])), "fused" if hc.fusion else "not")
        lengths = data.train.lengths()
        rows = make_rows(lengths, cfg.data.max_length, cfg.data.packing)
        val_rows = make_rows(data.val.lengths(), cfg.data.max_length, cfg.data.packing)
        pad = encoder_tokenizer.pad_token_id if encoder_tokenizer.pad_token_id is not None else 0

        def collate_of(samples) -> HintCollate:
            lm = Collator(samples, pad_id=tokenizer.pad_token_id, block_mask=block_mask, num_tasks=len(tasks))
            return HintCollate(lm, instruction_ids, pad)

        utilisation = packing_utilisation(rows, lengths, cfg.data.max_length) if cfg.data.packing else None
        log.info("train: %d samples in %d rows%s; val: %d samples", len(data.train), len(rows),
                 f" (packing utilisation {utilisation:.1%})" if utilisation is not None else "", len(data.val))

        # ---- what trains, optimizer groups ------------------------------------------------
        groups = logged_param_groups(objective, cfg.method, tc, components)

        def write_final(target: Path, trained: HintObjective) -> None:
            net = trained.hypernetwork
            net.slots.clear()

            def hint_files(tmp: Path) -> dict:
                net.save(tmp, encoder_trained=hc.encoder.trainable != "frozen")
                return {"family": "hint"}

            save_final(target, trained.lm_objective.lm, tokenizer, base=cfg.model, method=cfg.method,
                       extra_files=hint_files)

        return TaskRun(
            objective=objective, param_groups=groups, rows=rows, val_rows=val_rows,
            collate=collate_of(data.train), val_collate=collate_of(data.val), save_final=write_final,
            on_bad_sample=cfg.data.on_bad_sample, num_workers=cfg.data.num_workers, shuffle=cfg.data.shuffle,
            summary={"packing_utilisation": utilisation, "data": [r.__dict__ for r in data.reports],
                     "trainable": trainable_counts(objective, components), "hint_tasks": list(tasks)},
            flops_per_target=6 * sum(p.numel() for p in llm.parameters()),
            loss_groups=tasks,
        )

