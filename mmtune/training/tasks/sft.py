"""``task: sft``: supervised instruction tuning of a causal LM, text-only or with media branches.

    tokenizer + chat template -> LLM (+ quantization) + method -> branches + their methods
          -> conversation data (tokenized, cached, packed rows) -> objective -> final/ writer

The objective is :class:`CausalLMObjective`: summed next-token cross-entropy
over trained tokens. ``final/`` is the model's family layout
(``mmtune.models.families``) with the tokenizer and its chat template.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from mmtune.config.schema import SftRecipe
from mmtune.data.packing import Collator, make_rows, packing_utilisation
from mmtune.data.pipeline import build_conversation_data, format_reports
from mmtune.data.templates import install_template
from mmtune.models.kernels import apply_kernels
from mmtune.models.loading import load_tokenizer, resolve_attn
from mmtune.models.open import open_language_model, open_multimodal
from mmtune.models.run_outputs import save_final
from mmtune.training.init_from import continue_adapter, starting_point
from mmtune.training.loftq import saves_merged
from mmtune.training.methods import (
    Component,
    apply_component_method,
    apply_method,
    enable_activation_checkpointing,
    logged_param_groups,
    qlora_quantization_config,
    trainable_counts,
)
from mmtune.training.objective import CausalLMObjective
from mmtune.training.peft_methods import check_virtual_tokens, keep_initial_adapter, loss_penalty, step_hook
from mmtune.training.setup import Runtime
from mmtune.training.tasks.base import TaskRun

log = logging.getLogger("mmtune")


class SftTask:
    def setup(self, recipe: SftRecipe, runtime: Runtime) -> TaskRun:
        cfg, tc = recipe, recipe.train

        # ---- tokenizer, LLM (model.name or an earlier run: init_from) and method ----------
        start = starting_point(cfg)
        tokenizer = load_tokenizer(start.tokenizer)
        install_template(tokenizer, cfg.data.template)
        quant = qlora_quantization_config(runtime.device_type) if cfg.method.name == "qlora" else None
        llm = open_language_model(start.model, device_type=runtime.device_type, quantization_config=quant)
        fused_loss = apply_kernels(llm, tc.kernels, runtime.device_type)  # before peft wraps the model
        if tc.gradient_checkpointing:
            enable_activation_checkpointing(llm)
        llm.config.use_cache = False
        llm = apply_method(llm, cfg.method) if start.adapter is None else continue_adapter(llm, start.adapter)
        log.info("llm: %s", cfg.method.name)
        initial_adapter = keep_initial_adapter(llm, cfg.method, Path(cfg.output_dir), write=runtime.is_main)
        components = [Component("llm", llm, cfg.method.name, cfg.method.llm_lr if cfg.method.name != "frozen" else None)]

        # ---- media branches and what trains in each ------------------------------------
        model = llm
        branches = cfg.model.branches()
        if branches:
            model = open_multimodal(branches, llm)
            for name, branch in model.branches.items():
                for component, module in branch.components().items():
                    method = getattr(cfg.method.media, name).of(component)
                    apply_component_method(module, method, cfg.method.lora, f"{name}.{component}")
                    components.append(Component(f"{name}.{component}", module, method.trainable,
                                                method.lr if method.trainable != "frozen" else None))
        block_mask = resolve_attn(cfg.model.attn_implementation, runtime.device_type) != "flash_attention_2"
        check_virtual_tokens(llm, block_mask=block_mask)
        objective = CausalLMObjective(model, fused_loss, penalty=loss_penalty(llm))
        media = model.media_specs(tokenizer) if branches else {}

        # ---- data -------------------------------------------------------------------------
        with runtime.main_process_first():  # the main process tokenizes and fills the cache
            data = build_conversation_data(tokenizer, cfg.data, seed=tc.seed, media=media)
        for line in format_reports(data.reports):
            log.info("data: %s", line)
        lengths = data.train.lengths()
        rows = make_rows(lengths, cfg.data.max_length, cfg.data.packing)
        val_rows = make_rows(data.val.lengths(), cfg.data.max_length, cfg.data.packing)
        train_media = model.media_specs(tokenizer, train=True) if branches else {}
        tasks = data.train.tasks
        collate = Collator(data.train, pad_id=tokenizer.pad_token_id, block_mask=block_mask, media=train_media,
                           num_tasks=len(tasks))
        val_collate = Collator(data.val, pad_id=tokenizer.pad_token_id, block_mask=block_mask, media=media,
                               num_tasks=len(tasks))
        utilisation = packing_utilisation(rows, lengths, cfg.data.max_length) if cfg.data.packing else None
        log.info("train: %d samples in %d rows%s; val: %d samples", len(data.train), len(rows),
                 f" (packing utilisation {utilisation:.1%})" if utilisation is not None else "", len(data.val))

        # ---- objective check, what trains, optimizer groups ------------------------------
        first_ids = np.array(data.train[0][0])  # a copy: cached arrays are read-only
        # Text tokens only: an InstructBLIP-layout sample starts with its media placeholders.
        probe = torch.tensor(first_ids[first_ids >= 0][:32], dtype=torch.long)[None]
        if probe.shape[1] and not objective.check_selective_head(probe.to(next(objective.parameters()).device)):
            log.warning("this model post-processes logits in its forward; training through its full forward "
                        "(logits at every position: slower, more memory)")
        groups = logged_param_groups(objective, cfg.method, tc, components)

        allocation = step_hook(llm)  # AdaLoRA's rank allocation: the loop calls it, checkpoints keep its state

        def write_final(target: Path, trained: CausalLMObjective) -> None:
            save_final(target, trained.lm, tokenizer, base=start.model, method=cfg.method,
                       initial_adapter=initial_adapter, merge_adapter=saves_merged(cfg.method))

        return TaskRun(
            objective=objective, param_groups=groups, rows=rows, val_rows=val_rows,
            collate=collate, val_collate=val_collate, save_final=write_final, on_bad_sample=cfg.data.on_bad_sample,
            num_workers=cfg.data.num_workers, shuffle=cfg.data.shuffle,
            summary={"packing_utilisation": utilisation, "data": [r.__dict__ for r in data.reports],
                     "trainable": trainable_counts(objective, components)},
            flops_per_target=6 * sum(p.numel() for p in objective.parameters()),
            lomo=cfg.method.lomo if cfg.method.name == "lomo" else None,
            with_gradients=allocation, extra_state=allocation, loss_groups=tasks,
        )
