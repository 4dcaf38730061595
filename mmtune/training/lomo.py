"""LOMO and AdaLomo: each parameter updated the moment its gradient is complete, inside the backward pass.

LOMO (Lv et al. 2023, "Full Parameter Fine-tuning for Large Language Models with Limited Resources") fuses
the optimizer step into backward: autograd accumulates a parameter's gradient, the update uses it at once and
frees it. A full-parameter run then holds the weights and the activations, never the gradients of the whole
model, and no optimizer moments (AdamW holds three more copies of the weights). ``lomo`` is plain SGD;
``adalomo`` (Lv et al. 2023, "AdaLomo: Low-memory Optimization with Adaptive Learning Rate") adds Adafactor's
factored second moment (a row and a column vector per matrix), grouped update normalisation and a step size
relative to the parameter's RMS, without momentum.

Clipping by global norm needs the norm before any parameter moves, so a clipped step is the paper's two
backward passes over one forward: the first only measures the norm (each gradient freed as soon as it is
measured), the second updates with the clipping coefficient. fp16 gradients get dynamic loss scaling: an
overflow seen in the first pass skips the step and halves the scale; ``loss_scale_window`` good steps double it.

Why not the authors' ``lomo_optim`` package (0.1.1): its AdaLomo allocates its state with ``.cuda()`` (no CPU
runs), its loss scaler calls ``torch.distributed.get_rank()`` (fails in a one-process run), AdaLomo's state is
not in ``state_dict()`` (a resumed run would restart it), it has one learning rate (no parameter groups, so no
per-component rates and no ``LambdaLR``), and every hook walks every parameter. Here the update runs from
``Tensor.register_post_accumulate_grad_hook`` (PyTorch's mechanism for an optimizer in backward) and the state
lives in ``torch.optim.Optimizer``'s, so the schedule, checkpoints and resume work as they do for AdamW; the
update formulas are the package's.
"""

from __future__ import annotations

import functools
import logging
import math
import weakref
from dataclasses import asdict, dataclass

import torch

from mmtune.config.schema import LomoConfig
from mmtune.errors import TrainingError

log = logging.getLogger("mmtune")


@dataclass
class DynamicLossScale:
    """The loss multiplier that keeps fp16 gradients from underflowing; halved on overflow, doubled after a
    window of good steps (as ``torch.amp.GradScaler``, whose ``unscale_`` needs every gradient at once)."""

    scale: float
    window: int
    good_steps: int = 0

    def overflowed(self) -> None:
        self.scale /= 2
        self.good_steps = 0
        if self.scale < 1:
            raise TrainingError("fp16 gradients overflow even at loss scale 1; use bf16 (train.mixed_precision) "
                                "or float32 weights")

    def stepped(self) -> None:
        self.good_steps += 1
        if self.good_steps == self.window:
            self.scale *= 2
            self.good_steps = 0


class FusedLomo(torch.optim.Optimizer):
    """LOMO / AdaLomo over parameter groups (``lr``, ``weight_decay`` each; a schedule sets ``lr`` as usual).

    A step is ``fused_backward(loss)`` (the weights move there) then ``step()`` (bookkeeping; returns the
    gradient norm before clipping). Gradients reaching the parameters outside ``fused_backward`` are left alone.
    """

    def __init__(self, param_groups: list[dict], cfg: LomoConfig, *, lr: float, max_grad_norm: float | None,
                 scale_loss: bool) -> None:
        super().__init__(param_groups, {"lr": lr, "weight_decay": 0.0})
        self.cfg = cfg
        self.max_grad_norm = max_grad_norm
        self.loss_scale = DynamicLossScale(cfg.loss_scale, cfg.loss_scale_window) if scale_loss else None
        self.two_passes = max_grad_norm is not None or scale_loss
        """The norm (and an fp16 overflow) must be known before any weight moves: a first pass measures it."""
        self._pass: str | None = None  # "norm" or "update" while fused_backward runs
        self._sq_norm = torch.zeros(())
        self._clip = 1.0
        self._norm = torch.zeros(())
        this = weakref.ref(self)  # the hooks live as long as the parameters; they do not keep this alive

        def on_gradient(p: torch.Tensor, index: int) -> None:
            if (optimizer := this()) is not None:
                optimizer._on_gradient(p, index)

        for index, group in enumerate(self.param_groups):
            for p in group["params"]:
                p.register_post_accumulate_grad_hook(functools.partial(on_gradient, index=index))

    # ---- one step ---------------------------------------------------------------------------------------

    def fused_backward(self, loss: torch.Tensor) -> None:
        """Backward pass(es) of ``loss`` that update every parameter it reaches.

        A non-finite loss updates nothing (the loop stops on it, the weights untouched).
        """
        self._sq_norm = torch.zeros((), device=loss.device)
        if not torch.isfinite(loss.detach()):
            self._norm = torch.full((), math.nan)
            return
        if self.loss_scale is not None:
            loss = loss * self.loss_scale.scale
        if self.two_passes:
            self._backward("norm", loss, retain_graph=True)
            self._norm = self._sq_norm.sqrt()
            if not torch.isfinite(self._norm):
                if self.loss_scale is None:
                    raise TrainingError(f"the gradient norm is {float(self._norm)} though the loss is finite; stopped "
                                        "before updating the weights")
                before = self.loss_scale.scale
                self.loss_scale.overflowed()
                log.warning("fp16 gradients overflowed: step skipped, loss scale %g -> %g", before,
                            self.loss_scale.scale)
                return
            self._clip = min(1.0, self.max_grad_norm / (float(self._norm) + 1e-6)) if self.max_grad_norm else 1.0
            self._backward("update", loss)
        else:  # one pass: the norm is measured while the weights move (for the log)
            self._clip = 1.0
            self._backward("update", loss)
            self._norm = self._sq_norm.sqrt()
        if self.loss_scale is not None:
            self.loss_scale.stepped()

    @torch.no_grad()
    def step(self, closure=None) -> torch.Tensor:
        """Nothing left to update (``fused_backward`` did it); the gradient norm of the step, before clipping."""
        return self._norm

    def _backward(self, which: str, loss: torch.Tensor, retain_graph: bool = False) -> None:
        self._pass = which
        try:
            loss.backward(retain_graph=retain_graph)
        finally:
            self._pass = None

    @torch.no_grad()
    def _on_gradient(self, p: torch.Tensor, index: int) -> None:
        if self._pass is None:
            return
        # In place from here: the gradient is this hook's alone (a float32 one is p.grad's own buffer, which
        # autograd hands over), and no copy of the largest tensor (the embedding's) is made.
        grad = p.grad.float()
        p.grad = None  # the point of LOMO: no gradient outlives its use
        if self.loss_scale is not None:
            grad.div_(self.loss_scale.scale)
        if self._pass == "norm" or not self.two_passes:
            self._sq_norm += torch.linalg.vector_norm(grad).square()
        if self._pass == "norm":
            return
        if self._clip < 1.0:
            grad.mul_(self._clip)
        group = self.param_groups[index]  # looked up now: load_state_dict replaces the group dicts
        lr, decay = group["lr"], group["weight_decay"]
        weights = p.float()  # p itself when float32
        if self.cfg.optimizer == "lomo":
            if decay:
                weights.mul_(1 - lr * decay)
            weights.add_(grad, alpha=-lr)
        else:
            update = self._adalomo_direction(p, grad)
            step_size = lr * _rms(weights).clamp(min=self.cfg.eps[1])  # relative to the parameter's size
            if decay:
                weights.mul_(1 - step_size * decay)
            weights.sub_(update.mul_(step_size))
        if weights is not p:
            p.copy_(weights)

    def _adalomo_direction(self, p: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """grad / sqrt(factored second moment), scaled down to an RMS of at most ``clip_threshold``."""
        state = self.state[p]
        if not state:
            state["step"] = 0
            if p.ndim >= 2:
                state["row"] = torch.zeros(p.shape[:-1], dtype=torch.float32, device=p.device)
                state["col"] = torch.zeros(p.shape[:-2] + p.shape[-1:], dtype=torch.float32, device=p.device)
            else:
                state["sq"] = torch.zeros(p.shape, dtype=torch.float32, device=p.device)
        state["step"] += 1
        beta = 1.0 - state["step"] ** self.cfg.decay_rate
        eps = self.cfg.eps[0]
        if p.ndim >= 2:  # mean(g^2 + eps) along rows and columns, without a squared copy of the gradient
            row, col = state["row"], state["col"]
            row.mul_(beta).add_(_mean_square(grad, -1).add_(eps), alpha=1 - beta)
            col.mul_(beta).add_(_mean_square(grad, -2).add_(eps), alpha=1 - beta)
            update = grad * (row / row.mean(dim=-1, keepdim=True)).rsqrt().unsqueeze(-1)
            update.mul_(col.unsqueeze(-2).rsqrt())
        else:
            state["sq"].mul_(beta).add_(grad.square().add_(eps), alpha=1 - beta)
            update = grad * state["sq"].rsqrt()
        return update.div_((_rms(update) / self.cfg.clip_threshold).clamp(min=1.0))

    # ---- checkpoints --------------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        out = super().state_dict()
        if self.loss_scale is not None:
            out["loss_scale"] = asdict(self.loss_scale)
        return out

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        scale = state_dict.pop("loss_scale", None)
        super().load_state_dict(state_dict)
        for state in self.state.values():  # torch casts state to each parameter's dtype; the moments stay fp32
            for key in ("row", "col", "sq"):
                if key in state:
                    state[key] = state[key].float()
        if self.loss_scale is not None and scale is not None:
            self.loss_scale = DynamicLossScale(**scale)


def _rms(t: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(t) / math.sqrt(t.numel())


def _mean_square(t: torch.Tensor, dim: int) -> torch.Tensor:
    return torch.linalg.vector_norm(t, dim=dim).square_().div_(t.shape[dim])
