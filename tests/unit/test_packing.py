"""Packing: first-fit-decreasing bins, shifted targets, and packed == unpacked (loss and gradients)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmtune.data.packing import IGNORE_INDEX, Collator, first_fit_decreasing, make_rows, packing_utilisation
from mmtune.training.objective import CausalLMObjective


def naive_ffd(lengths, capacity):
    bins, free = [], []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        for b in range(len(bins)):
            if free[b] >= lengths[i]:
                bins[b].append(i)
                free[b] -= lengths[i]
                break
        else:
            bins.append([i])
            free.append(capacity - lengths[i])
    return bins


@pytest.mark.parametrize("seed", range(5))
def test_ffd_matches_reference_first_fit_decreasing(seed):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 300, size=400)
    bins = first_fit_decreasing(lengths, 512)
    assert bins == naive_ffd(lengths.tolist(), 512)
    flat = sorted(i for b in bins for i in b)
    assert flat == list(range(400))  # every sample exactly once
    assert all(lengths[b].sum() <= 512 for b in bins)


def test_ffd_rejects_items_over_capacity_and_handles_empty():
    assert first_fit_decreasing(np.array([], dtype=int), 8) == []
    with pytest.raises(ValueError):
        first_fit_decreasing(np.array([9]), 8)


def test_unpacked_rows_are_single_samples_and_utilisation_is_measured():
    lengths = np.array([3, 5, 8])
    assert make_rows(lengths, 8, packing=False) == [[0], [1], [2]]
    rows = make_rows(lengths, 8, packing=True)
    assert sorted(map(sorted, rows)) == [[0, 1], [2]]
    assert packing_utilisation(rows, lengths, 8) == pytest.approx(16 / 16)


def _samples():
    ids = [np.array([5, 6, 7, 8, 9], dtype=np.int32), np.array([10, 11, 12], dtype=np.int32), np.array([13, 14, 15, 16])]
    trained = [np.array([0, 0, 1, 1, 1], bool), np.array([1, 1, 1], bool), np.array([0, 1, 0, 1], bool)]
    return list(zip(ids, trained))


def test_collator_shifts_targets_inside_each_sample_and_restarts_positions():
    samples = _samples()
    batch = Collator(samples, pad_id=0, pad_to_multiple_of=1)([[0, 1, 2]])
    # sample 0: targets at t predict ids[t+1] where trained[t+1]; last token of a sample predicts nothing.
    expected = [IGNORE_INDEX, 7, 8, 9, IGNORE_INDEX,  # sample 0
                11, 12, IGNORE_INDEX,  # sample 1: its first token (10) is never a target
                14, IGNORE_INDEX, 16, IGNORE_INDEX]  # sample 2
    assert batch.targets[0].tolist() == expected
    assert batch.position_ids[0].tolist() == [0, 1, 2, 3, 4, 0, 1, 2, 0, 1, 2, 3]
    assert batch.num_targets == sum(t != IGNORE_INDEX for t in expected)
    mask = batch.attention_mask[0, 0]
    assert not mask[5, 4] and not mask[8, 7]  # no attention across samples
    assert mask[7, 5] and mask[4, 0] and not mask[0, 1]  # causal inside a sample


def test_train_on_prompt_never_trains_across_sample_boundaries():
    samples = [(ids, np.ones(len(ids), bool)) for ids, _ in _samples()]
    batch = Collator(samples, pad_id=0, pad_to_multiple_of=1)([[0, 1, 2]])
    targets = batch.targets[0].tolist()
    # the last token of each sample (positions 4, 7, 11) must not predict the next sample's first token
    assert targets[4] == targets[7] == targets[11] == IGNORE_INDEX


def _tiny_model():
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).float()


def _loss_and_grads(model, batch):
    model.zero_grad()
    objective = CausalLMObjective(model)
    loss_sum, n = objective(batch)
    (loss_sum / n).backward()
    return (loss_sum / n).detach(), {k: p.grad.clone() for k, p in model.named_parameters()}


def test_packed_batch_equals_unpacked_batch_in_loss_and_gradients():
    rng = np.random.default_rng(0)
    samples = []
    for n in (17, 5, 29, 11, 3, 23):
        ids = rng.integers(1, 64, size=n).astype(np.int32)
        trained = rng.random(n) < 0.6
        trained[-1] = True
        samples.append((ids, trained))
    model = _tiny_model()
    packed_rows = first_fit_decreasing(np.array([len(s[0]) for s in samples]), 48)
    assert len(packed_rows) < len(samples)  # really packed
    packed = Collator(samples, pad_id=0)(packed_rows)
    unpacked = Collator(samples, pad_id=0)([[i] for i in range(len(samples))])
    assert packed.num_targets == unpacked.num_targets
    loss_p, grads_p = _loss_and_grads(model, packed)
    loss_u, grads_u = _loss_and_grads(model, unpacked)
    assert torch.allclose(loss_p, loss_u, atol=1e-5)
    for name in grads_u:
        assert torch.allclose(grads_p[name], grads_u[name], atol=1e-5), name


def test_objective_equals_hf_loss_on_a_single_sample():
    """The selective-head loss is the usual causal LM loss over trained tokens."""
    model = _tiny_model()
    ids = torch.randint(1, 64, (1, 12))
    trained = np.ones(12, bool)
    trained[:4] = False
    batch = Collator([(ids[0].numpy(), trained)], pad_id=0, pad_to_multiple_of=1)([[0]])
    loss_sum, n = CausalLMObjective(model)(batch)
    labels = ids.clone()
    labels[0, :4] = IGNORE_INDEX
    reference = model(ids, labels=labels).loss
    assert torch.allclose(loss_sum / n, reference, atol=1e-5)


def test_varlen_collation_has_no_mask_and_restarting_positions():
    """The flash-attention path: samples are told apart by position ids alone."""
    batch = Collator(_samples(), pad_id=0, block_mask=False, pad_to_multiple_of=8)([[0, 1, 2]])
    assert batch.attention_mask is None
    assert batch.input_ids.shape[1] == 16  # 12 tokens padded to a multiple of 8
    assert batch.position_ids[0].tolist() == [0, 1, 2, 3, 4, 0, 1, 2, 0, 1, 2, 3, 0, 1, 2, 3]
    assert (batch.targets[0, 12:] == IGNORE_INDEX).all() and batch.num_tokens == 12


def test_objective_falls_back_to_the_full_forward_when_the_model_rescales_logits():
    from transformers import LlamaForCausalLM

    class ScaledLogitsLlama(LlamaForCausalLM):  # like families that scale logits in forward
        def forward(self, *args, **kwargs):
            out = super().forward(*args, **kwargs)
            out.logits = out.logits * 0.25
            return out

    base = _tiny_model()
    model = ScaledLogitsLlama(base.config)
    model.load_state_dict(base.state_dict())
    ids = torch.randint(1, 64, (1, 12))
    objective = CausalLMObjective(model)
    assert not objective.check_selective_head(ids)
    assert CausalLMObjective(base).check_selective_head(ids)  # a plain model keeps the fast path
    batch = Collator([(ids[0].numpy(), np.ones(12, bool))], pad_id=0, pad_to_multiple_of=1)([[0]])
    loss_sum, n = objective(batch)
    reference = torch.nn.functional.cross_entropy(model(ids).logits[0, :-1], ids[0, 1:])  # the scaled logits
    assert torch.allclose(loss_sum / n, reference, atol=1e-5)
