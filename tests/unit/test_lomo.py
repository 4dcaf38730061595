"""LOMO / AdaLomo (``method.name: lomo``): the update fused into backward against the formulas computed by hand.

Each check builds two copies of a tiny MLP: one is updated by :class:`FusedLomo` inside backward, the other by
autograd's gradients and the paper's formula written out here.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from mmtune.config.loader import validate_recipe
from mmtune.config.schema import LomoConfig
from mmtune.errors import ConfigError
from mmtune.training.lomo import FusedLomo


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))


def data(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(5, 4, generator=g), torch.randn(5, 3, generator=g)


def loss_of(model: nn.Module, seed: int) -> torch.Tensor:
    x, y = data(seed)
    return ((model(x) - y) ** 2).sum()


def groups(model: nn.Module, decay: float) -> list[dict]:
    """Matrices decay, vectors do not (as ``training.methods.param_groups`` sets them)."""
    return [{"params": [p for p in model.parameters() if p.ndim >= 2], "weight_decay": decay},
            {"params": [p for p in model.parameters() if p.ndim < 2], "weight_decay": 0.0}]


def max_diff(a: nn.Module, b: nn.Module) -> float:
    return max((p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters()))


@pytest.mark.parametrize("max_norm", [None, 0.5], ids=["no clipping", "clipped"])
def test_lomo_step_is_the_sgd_step_computed_by_hand(max_norm):
    fused, ref = mlp(), mlp()
    opt = FusedLomo(groups(fused, 0.1), LomoConfig(), lr=0.05, max_grad_norm=max_norm, scale_loss=False)
    opt.fused_backward(loss_of(fused, 1))
    norm = opt.step()

    loss_of(ref, 1).backward()
    grads = [p.grad for p in ref.parameters()]
    total = torch.sqrt(sum(g.pow(2).sum() for g in grads))
    coef = min(1.0, max_norm / (float(total) + 1e-6)) if max_norm else 1.0
    with torch.no_grad():
        for p, g in zip(ref.parameters(), grads):
            decay = 0.1 if p.ndim >= 2 else 0.0
            p.mul_(1 - 0.05 * decay).sub_(0.05 * coef * g)

    assert float(norm) == pytest.approx(float(total), rel=1e-6)
    if max_norm:
        assert coef < 0.2  # the clipping really bites here
    assert max_diff(fused, ref) < 1e-6
    assert max_diff(fused, mlp()) > 1e-3  # and the weights did move
    assert all(p.grad is None for p in fused.parameters())  # no gradient outlives its update


def test_the_schedule_sets_the_learning_rate_of_each_fused_step():
    fused, ref = mlp(), mlp()
    opt = FusedLomo(groups(fused, 0.0), LomoConfig(), lr=0.05, max_grad_norm=None, scale_loss=False)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.1**step)  # 0.05, then 0.005
    for step, lr in enumerate((0.05, 0.005)):
        opt.fused_backward(loss_of(fused, step))
        opt.step()
        schedule.step()
        loss_of(ref, step).backward()
        with torch.no_grad():
            for p in ref.parameters():
                p.sub_(lr * p.grad)
                p.grad = None
        assert max_diff(fused, ref) < 1e-6, step


def adalomo_by_hand(p: torch.Tensor, g: torch.Tensor, moments: dict, t: int, lr: float, decay: float) -> None:
    """AdaLomo's step (lomo_optim.AdaLomo.fuse_update), written out: V = R C^T / mean(R) for a matrix."""
    beta = 1 - t ** -0.8
    sq = g**2 + 1e-30
    if p.ndim == 2:
        moments["R"] = beta * moments.get("R", 0) + (1 - beta) * sq.mean(dim=1)
        moments["C"] = beta * moments.get("C", 0) + (1 - beta) * sq.mean(dim=0)
        v = torch.outer(moments["R"], moments["C"]) / moments["R"].mean()
    else:
        v = moments["V"] = beta * moments.get("V", 0) + (1 - beta) * sq
    u = g / v.sqrt()
    u = u / max(1.0, float(u.pow(2).mean().sqrt()) / 1.0)
    alpha = lr * max(1e-3, float(p.detach().pow(2).mean().sqrt()))
    with torch.no_grad():
        p.mul_(1 - alpha * decay).sub_(alpha * u)


def test_adalomo_two_steps_equal_its_formula_by_hand():
    fused, ref = mlp(), mlp()
    opt = FusedLomo(groups(fused, 0.1), LomoConfig(optimizer="adalomo"), lr=0.02, max_grad_norm=None,
                    scale_loss=False)
    moments = {name: {} for name, _ in ref.named_parameters()}
    for t in (1, 2):  # step 1 has beta = 0; step 2 mixes in the first step's moments
        opt.fused_backward(loss_of(fused, t))
        opt.step()
        loss_of(ref, t).backward()
        for name, p in ref.named_parameters():
            adalomo_by_hand(p, p.grad, moments[name], t, 0.02, 0.1 if p.ndim >= 2 else 0.0)
            p.grad = None
        assert max_diff(fused, ref) < 1e-6, t
    assert max_diff(fused, mlp()) > 1e-3


def test_adalomo_state_survives_a_checkpoint_round_trip():
    """A resumed run continues with the same moments and step counts (LOMO itself has none)."""
    straight, cut = mlp(), mlp()
    cfg = LomoConfig(optimizer="adalomo")
    a = FusedLomo(groups(straight, 0.0), cfg, lr=0.02, max_grad_norm=1.0, scale_loss=False)
    b = FusedLomo(groups(cut, 0.0), cfg, lr=0.02, max_grad_norm=1.0, scale_loss=False)
    for opt, model in ((a, straight), (b, cut)):
        opt.fused_backward(loss_of(model, 1))
    saved = copy.deepcopy(b.state_dict())
    assert {"step", "row", "col"} <= set(saved["state"][0]) and saved["state"][0]["step"] == 1
    del b
    resumed = FusedLomo(groups(cut, 0.0), cfg, lr=0.02, max_grad_norm=1.0, scale_loss=False)
    resumed.load_state_dict(saved)
    for opt, model in ((a, straight), (resumed, cut)):
        opt.fused_backward(loss_of(model, 2))
    assert max_diff(straight, cut) == 0.0
    fresh = mlp()  # the control: without the moments the second step differs
    c = FusedLomo(groups(fresh, 0.0), cfg, lr=0.02, max_grad_norm=1.0, scale_loss=False)
    c.fused_backward(loss_of(fresh, 1))
    c.state.clear()
    c.fused_backward(loss_of(fresh, 2))
    assert max_diff(fresh, cut) > 1e-6


def test_fp16_overflow_skips_the_step_and_halves_the_loss_scale():
    """Float16 weights: 1.5 x 2^16 overflows fp16, so step 1 is skipped; at 2^15 the step is exact SGD."""
    model = nn.Linear(2, 1, bias=False).half()
    with torch.no_grad():
        model.weight.fill_(0.75)
    x = torch.ones(1, 2, dtype=torch.float16)
    opt = FusedLomo([{"params": [model.weight]}], LomoConfig(loss_scale_window=1), lr=0.25, max_grad_norm=None,
                    scale_loss=True)
    opt.fused_backward(model(x).sum())
    assert math.isinf(float(opt.step()))
    assert model.weight.tolist() == [[0.75, 0.75]] and opt.loss_scale.scale == 2.0**15
    opt.fused_backward(model(x).sum())
    assert float(opt.step()) == pytest.approx(math.sqrt(2))
    assert model.weight.tolist() == [[0.5, 0.5]]  # 0.75 - 0.25 x 1: the unscaled gradient
    assert opt.loss_scale.scale == 2.0**16  # one good step (the window) doubles it again
    assert opt.state_dict()["loss_scale"]["scale"] == 2.0**16  # and checkpoints keep it


def test_a_non_finite_loss_moves_nothing():
    model = mlp()
    opt = FusedLomo(groups(model, 0.0), LomoConfig(), lr=0.1, max_grad_norm=1.0, scale_loss=False)
    opt.fused_backward(loss_of(model, 1) * float("nan"))
    assert math.isnan(float(opt.step())) and max_diff(model, mlp()) == 0.0


@pytest.mark.parametrize(("raw", "key"), [
    ({"train": {"grad_accum_steps": 2}}, "train.grad_accum_steps"),
    ({"model": {"media": {"image": {"encoder": {"pretrained": None}}}},
      "method": {"media": {"image": {"encoder": {"trainable": "lora"}}}}}, "method.media.image.encoder.trainable"),
])
def test_settings_lomo_cannot_run_are_one_line_naming_the_key(raw, key):
    raw = {**raw, "method": {"name": "lomo", **raw.get("method", {})}}
    with pytest.raises(ConfigError) as info:
        validate_recipe(raw)
    msg = str(info.value)
    assert "\n" not in msg and f"recipe: {key}: " in msg and "lomo" in msg
    raw["method"]["name"] = "full"  # the control: the same settings with AdamW are fine
    validate_recipe(raw)


def test_lomo_matches_the_authors_lomo_optim_on_the_same_model():
    """The reference implementation (``lomo_optim.Lomo``: its grad_norm pass, then fused_backward) agrees."""
    from lomo_optim import Lomo

    ours, theirs = mlp(), mlp()
    opt = FusedLomo(groups(ours, 0.0), LomoConfig(), lr=0.05, max_grad_norm=0.5, scale_loss=False)
    reference = Lomo(theirs, lr=0.05, clip_grad_norm=0.5)
    for seed in (1, 2):
        opt.fused_backward(loss_of(ours, seed))
        opt.step()
        loss = loss_of(theirs, seed)
        reference.grad_norm(loss)  # its first pass (the graph retained), then its update pass
        reference.fused_backward(loss, 0.05)
        assert max_diff(ours, theirs) < 1e-6, seed
