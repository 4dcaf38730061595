"""Synthetic instruction data from a local causal LM: Self-Instruct and Evol-Instruct.

``mmtune data generate self-instruct|evol-instruct OUT_DIR`` on the command
line; from Python::

    from mmtune.datagen import SelfInstructOptions, load_sampler, self_instruct
    report = self_instruct("gen/si", load_sampler("smollm2-135m-instruct"), SelfInstructOptions(count=50))
    print(report.format())   # rows are in gen/si/data.jsonl (alpaca format)
"""

from mmtune.datagen.evol_instruct import EvolInstructOptions, evol_instruct
from mmtune.datagen.report import GenerationReport
from mmtune.datagen.rouge import RougePool, rouge_l
from mmtune.datagen.sampler import Completion, HFSampler, load_sampler
from mmtune.datagen.self_instruct import SelfInstructOptions, self_instruct

__all__ = [
    "Completion", "EvolInstructOptions", "GenerationReport", "HFSampler", "RougePool", "SelfInstructOptions",
    "evol_instruct", "load_sampler", "rouge_l", "self_instruct",
]
