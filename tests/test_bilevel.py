"""Schedule pieces of the bilevel module used by BL-JUST (espnet2_birq.bljust).

The shared PenaltySchedule itself is tested in tests/test_birq.py.
"""

import pytest
import torch

from espnet2_birq.bilevel import register_update_hooks
from espnet2_birq.bljust import (
    EXPLORATION,
    FINAL,
    JOINT,
    BlJustSchedule,
    register_lr_scale_hooks,
    scale_gradient,
)

E, J, F = EXPLORATION, JOINT, FINAL


def run_schedule(schedule, epochs, updates_per_epoch, start_epoch=1):
    """(epoch, phase, gamma) of every update, as a training loop would see them."""
    seen = []
    for epoch in range(start_epoch, epochs + 1):
        for _ in range(updates_per_epoch):
            schedule.start_epoch(epoch)  # every batch carries its epoch
            seen.append((epoch, schedule.phase(), round(schedule.gamma(), 6)))
            schedule.on_optimizer_step()
    return seen


def make_schedule(**overrides):
    conf = dict(
        gamma_schedule="linear",
        gamma_0=0.0,
        gamma_max=1.0,
        gamma_ramp_steps=8,
        exploration_updates=1,
        final_epochs=1,
        final_lr_scale=0.25,
        max_epoch=3,
    )
    conf.update(overrides)
    return BlJustSchedule(**conf)


def test_phases_and_gamma_take_the_hand_computed_values():
    seen = run_schedule(make_schedule(), epochs=3, updates_per_epoch=4)
    # gamma = updates / 8 (exploration updates count); epoch 3 is the final phase.
    assert seen == [
        (1, E, 0.0), (1, J, 0.125), (1, J, 0.25), (1, J, 0.375),
        (2, E, 0.5), (2, J, 0.625), (2, J, 0.75), (2, J, 0.875),
        (3, F, 1.0), (3, F, 1.0), (3, F, 1.0), (3, F, 1.0),
    ]


def test_step_schedule_and_no_phases():
    schedule = make_schedule(
        gamma_schedule="step", gamma_0=0.2, gamma_step_interval=4,
        exploration_updates=0, final_epochs=0, max_epoch=None,
    )
    seen = run_schedule(schedule, epochs=3, updates_per_epoch=4)
    assert [phase for _, phase, _ in seen] == [J] * 12
    # held within blocks of 4 updates: 0.2 + 0.8 * {0, 4, 8} / 8
    assert [g for *_, g in seen] == [0.2] * 4 + [0.6] * 4 + [1.0] * 4


def test_counters_count_optimiser_updates():
    """With accumulation, the forwards of one update see the same phase and gamma."""
    schedule = make_schedule()
    param = torch.nn.Parameter(torch.zeros(1))
    holder = torch.nn.Module()
    holder.schedule = schedule
    holder.param = param
    optimizer = torch.optim.SGD([param], lr=0.1)
    register_update_hooks(holder, [optimizer])
    seen = []
    for _ in range(3):  # updates
        for _ in range(2):  # accum_grad = 2
            schedule.start_epoch(1)
            seen.append((schedule.phase(), schedule.gamma()))
            (param * 1.0).sum().backward()
        optimizer.step()
        optimizer.zero_grad()
    assert seen == [(E, 0.0), (E, 0.0), (J, 0.125), (J, 0.125), (J, 0.25), (J, 0.25)]
    assert int(schedule.num_updates) == 3


def test_schedule_is_exact_after_resume():
    uninterrupted = run_schedule(make_schedule(), epochs=3, updates_per_epoch=4)
    first = make_schedule()
    before = run_schedule(first, epochs=1, updates_per_epoch=4)
    resumed = make_schedule()  # a fresh process: buffers from the checkpoint
    resumed.load_state_dict(first.state_dict())
    after = run_schedule(resumed, epochs=3, updates_per_epoch=4, start_epoch=2)
    assert before + after == uninterrupted
    assert set(first.state_dict()) >= {"num_updates", "epoch", "epoch_start_update"}


@pytest.mark.parametrize(
    "conf, message",
    [
        (dict(final_epochs=3, max_epoch=3), "max_epoch > final_epochs"),
        (dict(final_epochs=1, max_epoch=None), "max_epoch > final_epochs"),
        (dict(final_lr_scale=0.0), "final_lr_scale"),
        (dict(exploration_updates=-1), "exploration_updates"),
    ],
)
def test_bad_schedules_are_refused(conf, message):
    with pytest.raises(ValueError, match=message):
        make_schedule(**conf)


def test_final_phase_scales_the_learning_rate_of_the_step_only():
    schedule = make_schedule(exploration_updates=0)
    holder = torch.nn.Module()
    holder.schedule = schedule
    holder.param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([holder.param], lr=0.5)
    register_update_hooks(holder, [optimizer])
    assert register_lr_scale_hooks(holder, [optimizer]) == [schedule]

    def one_step(epoch):
        schedule.start_epoch(epoch)
        before = holder.param.detach().clone()
        holder.param.grad = torch.ones(1)
        optimizer.step()
        return float(before - holder.param.detach())

    assert one_step(2) == pytest.approx(0.5)  # joint: full rate
    assert one_step(3) == pytest.approx(0.5 * 0.25)  # final: 0.25 x
    assert optimizer.param_groups[0]["lr"] == 0.5  # restored for the scheduler


def test_scale_gradient():
    x = torch.tensor([1.0, -2.0], requires_grad=True)
    y = scale_gradient(x, 0.3)
    assert torch.equal(y, x)
    (y * torch.tensor([2.0, 5.0])).sum().backward()
    assert torch.allclose(x.grad, torch.tensor([0.6, 1.5]))
    x.grad = None
    scale_gradient(x, 0.0).sum().backward()
    assert torch.equal(x.grad, torch.zeros(2))
