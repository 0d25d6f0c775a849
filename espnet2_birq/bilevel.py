"""Penalty-based bilevel training: one schedule module shared by BiRQ and BL-JUST.

Both objectives minimise an upper-level loss ``U`` subject to the parameters staying
(near) a minimiser of a lower-level loss ``L``, solved to first order with a penalty
(penalty-based bilevel gradient descent): each update follows the gradient of

    U + gamma_t * (L - v)

where ``v`` estimates the lower level's optimum and carries no gradient, so it only
shifts the logged value, and ``gamma_t`` is a schedule that moves the weight towards the
lower level as training goes on. For BiRQ the upper level is the enhanced-label loss and
the lower level the anchoring (BEST-RQ) loss; for BL-JUST the upper level is the
supervised CTC loss and the lower level the self-supervised loss.

Every counter here counts **optimiser updates**, not forward passes: the task registers
:func:`register_update_hooks` on its optimisers, which calls ``on_optimizer_step`` of
every module that has one after each step the optimiser actually takes (with gradient
accumulation, one update per ``accum_grad`` forwards; updates the trainer skips for a
non-finite gradient are not counted). The counter is a buffer, so it is saved in every
checkpoint and the schedules are exact after a resume.
"""

from typing import Iterable, List, Optional

import torch
from typeguard import typechecked

GAMMA_SCHEDULES = ("constant", "linear", "step")


class PenaltySchedule(torch.nn.Module):
    """Update counter, warm-up, penalty weight ``gamma_t`` and the estimate ``v``.

    Args:
        gamma_schedule: ``constant`` (``gamma_max`` throughout), ``linear``
            (``gamma_0`` to ``gamma_max`` over ``gamma_ramp_steps`` updates) or ``step``
            (the linear ramp held constant within blocks of ``gamma_step_interval``
            updates, e.g. one epoch each).
        gamma_0: Penalty weight when the ramp starts.
        gamma_max: Penalty weight at the end of the ramp.
        gamma_ramp_steps: Updates the ramp lasts (0: ``gamma_max`` at once).
        gamma_step_interval: Width of one step of the ``step`` schedule, in updates.
        warmup_steps: Updates before the upper level switches on; the ramp starts
            when the warm-up ends.
        v_momentum: Momentum of ``v``, an exponential average of the lower-level loss
            (initialised from its first finite value).
    """

    @typechecked
    def __init__(
        self,
        gamma_schedule: str = "linear",
        gamma_0: float = 0.1,
        gamma_max: float = 1.0,
        gamma_ramp_steps: int = 10000,
        gamma_step_interval: int = 1000,
        warmup_steps: int = 1000,
        v_momentum: float = 0.99,
    ):
        super().__init__()
        if gamma_schedule not in GAMMA_SCHEDULES:
            raise ValueError(
                f"gamma_schedule must be one of {GAMMA_SCHEDULES}, got {gamma_schedule}"
            )
        if gamma_ramp_steps < 0 or gamma_step_interval < 1 or warmup_steps < 0:
            raise ValueError(
                "gamma_ramp_steps/warmup_steps must be >= 0, gamma_step_interval >= 1"
            )
        if gamma_0 < 0 or gamma_max < 0:
            raise ValueError("gamma_0 and gamma_max must be >= 0")
        if not 0.0 <= v_momentum < 1.0:
            raise ValueError("v_momentum must be in [0, 1)")
        self.gamma_schedule = gamma_schedule
        self.gamma_0, self.gamma_max = gamma_0, gamma_max
        self.gamma_ramp_steps = gamma_ramp_steps
        self.gamma_step_interval = gamma_step_interval
        self.warmup_steps = warmup_steps
        self.v_momentum = v_momentum
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))
        self.register_buffer("v", torch.zeros(()))
        self.register_buffer("v_initialized", torch.zeros((), dtype=torch.bool))

    def extra_repr(self) -> str:
        return (
            f"gamma_schedule={self.gamma_schedule}, gamma_0={self.gamma_0}, "
            f"gamma_max={self.gamma_max}, gamma_ramp_steps={self.gamma_ramp_steps}, "
            f"warmup_steps={self.warmup_steps}, v_momentum={self.v_momentum}"
        )

    def on_optimizer_step(self) -> None:
        """Count one optimiser update (called by the hook of :func:`register_update_hooks`)."""
        self.num_updates.add_(1)

    def step_index(self, step: Optional[int] = None) -> int:
        return int(self.num_updates) if step is None else step

    def in_warmup(self, step: Optional[int] = None) -> bool:
        if self.warmup_steps == 0:
            return False  # no read of the counter: on a GPU that would sync the device
        return self.step_index(step) < self.warmup_steps

    def gamma(self, step: Optional[int] = None) -> float:
        """Penalty weight after ``step`` updates (default: now)."""
        if self.gamma_schedule == "constant":
            return self.gamma_max
        step = self.step_index(step)
        progress = max(0, step - self.warmup_steps)
        if self.gamma_schedule == "step":
            progress = (progress // self.gamma_step_interval) * self.gamma_step_interval
        if self.gamma_ramp_steps == 0:
            return self.gamma_max
        fraction = min(1.0, progress / self.gamma_ramp_steps)
        return self.gamma_0 + (self.gamma_max - self.gamma_0) * fraction

    @torch.no_grad()
    def update_v(self, lower_loss: torch.Tensor) -> None:
        """Fold a lower-level loss value into ``v``; a non-finite value is ignored.

        Tensor operations only (no ``bool()`` of a device tensor), so a training
        step on a GPU is not synchronised here.
        """
        value = lower_loss.detach().to(self.v.dtype).reshape(())
        finite = torch.isfinite(value)
        averaged = self.v * self.v_momentum + (1 - self.v_momentum) * value
        updated = torch.where(self.v_initialized, averaged, value)
        self.v.copy_(torch.where(finite, updated, self.v))
        self.v_initialized.logical_or_(finite)

    def penalty_objective(
        self, upper: torch.Tensor, lower: torch.Tensor, gamma: float
    ) -> torch.Tensor:
        """``upper + gamma * (lower - v)``; its gradient is grad U + gamma grad L."""
        return upper + gamma * (lower - self.v.detach())


def register_update_hooks(
    model: torch.nn.Module, optimizers: Iterable[torch.optim.Optimizer]
) -> List[torch.nn.Module]:
    """Call ``on_optimizer_step()`` of every submodule that has one after each update.

    The hooks are ``Optimizer.register_step_post_hook`` hooks, so they run only for
    steps the optimiser really takes (ESPnet's trainer skips ``step()`` for a
    non-finite gradient norm, and AMP's grad scaler for an overflow). With several
    optimisers, only the first one counts (one update = one step of all of them).

    Returns:
        The modules that will be called.
    """
    counted = [
        module
        for module in model.modules()
        if callable(getattr(module, "on_optimizer_step", None))
    ]
    optimizers = list(optimizers)
    if counted and optimizers:

        def hook(optimizer, args, kwargs):
            for module in counted:
                module.on_optimizer_step()

        optimizers[0].register_step_post_hook(hook)
    return counted
