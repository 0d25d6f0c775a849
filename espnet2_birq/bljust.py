"""BL-JUST: joint supervised and self-supervised bilevel training (one run, two data sets).

The upper level is the supervised ASR loss (CTC, or ESPnet's hybrid CTC/attention loss)
on labelled data; the lower level is a self-supervised loss of this project (BEST-RQ,
BiRQ, ...) on unlabelled data. Penalty-based bilevel gradient descent
(:mod:`espnet2_birq.bilevel`) routes the gradients of one backward pass:

- encoder (with frontend and pre-encoder): grad(L_sup + gamma_t * L_ssl);
- ASR heads (CTC, decoder): grad(L_sup) only;
- SSL heads (prediction heads of the losses): grad(L_ssl) only.

The SSL branch reads the encoder's outputs through :func:`scale_gradient`, an identity
whose backward multiplies by ``gamma_t``: the heads behind it see the full grad(L_ssl),
the encoder in front of it gamma_t times that.

Training runs in three phases (:class:`BlJustSchedule`), counted in optimiser updates
and epochs:

- ``exploration``: the first ``exploration_updates`` updates of every epoch are pure SSL
  (encoder and SSL heads follow grad(L_ssl); the ASR heads are not updated); the data
  loader gives them the unlabelled batch only (:meth:`BlJustSchedule.exploration_batches`);
- ``joint``: the bilevel update above, gamma_t rising from ``gamma_0`` to ``gamma_max``;
- ``final``: the last ``final_epochs`` epochs are supervised only, at the learning rate
  times ``final_lr_scale`` (:func:`register_lr_scale_hooks`); the SSL heads rest.

The model is an ordinary :class:`ESPnetASRModel` plus one submodule ``bljust`` (SSL
heads, quantisers, schedule counters). ESPnet's ASR loader
(``ASRTask.build_model_from_file``) loads state dicts with ``strict=False``, so the model
files the joint training writes decode with ``espnet2.bin.asr_inference`` unchanged:
the ``bljust.*`` entries are ignored there.
"""

from typing import Dict, Iterable, List, Optional, Tuple

import torch
from typeguard import typechecked

from espnet2.asr.espnet_model import ESPnetASRModel
from espnet2.torch_utils.device_funcs import force_gatherable
from espnet2_birq.bilevel import PenaltySchedule
from espnet2_birq.ssl_model import BirqSSLModel

PHASES = ("exploration", "joint", "final")
EXPLORATION, JOINT, FINAL = range(3)


class BlJustSchedule(PenaltySchedule):
    """:class:`PenaltySchedule` with BL-JUST's phases.

    gamma_t is the parent's schedule over all optimiser updates (exploration updates
    included; no warm-up: the exploration updates play that role). The epoch is told by
    the data (:meth:`start_epoch`, from the ``bljust_epoch`` entry of each training
    batch); the update at which it started is a buffer, so the phase is exact after a
    resume.

    Args:
        exploration_updates: Pure-SSL updates at the start of every epoch before the
            final phase.
        final_epochs: Supervised-only epochs at the end of training.
        final_lr_scale: Learning-rate factor in the final phase.
        max_epoch: Epochs of the run (the task injects ``--max_epoch``); needed when
            ``final_epochs > 0``.
        Other arguments: those of :class:`PenaltySchedule` (``warmup_steps`` is 0).
    """

    @typechecked
    def __init__(
        self,
        gamma_schedule: str = "linear",
        gamma_0: float = 0.0,
        gamma_max: float = 1.0,
        gamma_ramp_steps: int = 10000,
        gamma_step_interval: int = 1000,
        v_momentum: float = 0.99,
        exploration_updates: int = 0,
        final_epochs: int = 0,
        final_lr_scale: float = 0.1,
        max_epoch: Optional[int] = None,
    ):
        super().__init__(
            gamma_schedule=gamma_schedule,
            gamma_0=gamma_0,
            gamma_max=gamma_max,
            gamma_ramp_steps=gamma_ramp_steps,
            gamma_step_interval=gamma_step_interval,
            warmup_steps=0,
            v_momentum=v_momentum,
        )
        if exploration_updates < 0 or final_epochs < 0:
            raise ValueError("exploration_updates and final_epochs must be >= 0")
        if not 0.0 < final_lr_scale <= 1.0:
            raise ValueError(f"final_lr_scale must be in (0, 1], got {final_lr_scale}")
        if final_epochs > 0 and (max_epoch is None or final_epochs >= max_epoch):
            raise ValueError(
                f"final_epochs={final_epochs} needs max_epoch > final_epochs (got "
                f"max_epoch={max_epoch}): at least one epoch must train both levels"
            )
        self.exploration_updates = exploration_updates
        self.final_epochs = final_epochs
        self.final_lr_scale = final_lr_scale
        self.max_epoch = max_epoch
        self.register_buffer("epoch", torch.zeros((), dtype=torch.long))
        self.register_buffer("epoch_start_update", torch.zeros((), dtype=torch.long))

    def extra_repr(self) -> str:
        return super().extra_repr() + (
            f", exploration_updates={self.exploration_updates}, "
            f"final_epochs={self.final_epochs}, final_lr_scale={self.final_lr_scale}, "
            f"max_epoch={self.max_epoch}"
        )

    def is_final_epoch(self, epoch: int) -> bool:
        return self.final_epochs > 0 and epoch > self.max_epoch - self.final_epochs

    @torch.no_grad()
    def start_epoch(self, epoch: int) -> None:
        """Note the epoch of the current batch; a new epoch restarts the exploration."""
        if epoch != int(self.epoch):
            self.epoch.fill_(epoch)
            self.epoch_start_update.copy_(self.num_updates)

    def phase(self) -> int:
        """EXPLORATION, JOINT or FINAL for the next update."""
        if self.is_final_epoch(int(self.epoch)):
            return FINAL
        if int(self.num_updates - self.epoch_start_update) < self.exploration_updates:
            return EXPLORATION
        return JOINT

    def lr_scale(self) -> float:
        return self.final_lr_scale if self.phase() == FINAL else 1.0

    def exploration_batches(self, epoch: int, accum_grad: int = 1) -> int:
        """Leading batches of ``epoch`` that are certainly exploration updates.

        The data loader leaves the labelled half out of these batches. They are the
        first ``exploration_updates * accum_grad`` batches of an epoch that is not a
        final one: before batch ``i`` (from 0) the epoch has taken at most ``i //
        accum_grad`` optimiser updates (fewer when one was skipped), so the model is
        still exploring. A skipped update can only prolong the exploration into a
        batch that carries a labelled half, which the model then ignores.
        """
        if self.is_final_epoch(epoch):
            return 0
        return self.exploration_updates * max(accum_grad, 1)


class _ScaleGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad * ctx.scale, None


def scale_gradient(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Identity in the forward pass; the backward pass multiplies by ``scale``."""
    if scale == 1.0 or not x.requires_grad:
        return x
    return _ScaleGradient.apply(x, scale)


class SharedEncoderSSLModel(BirqSSLModel):
    """:class:`BirqSSLModel` on the encoder (and frontend, normalisation, pre-encoder)
    of an ASR model, with the encoder's share of the SSL gradient scaled.

    The shared modules are held as plain attributes, not submodules, so the ASR model
    alone owns, moves and saves them (no duplicate state-dict entries).
    ``encoder_grad_scale`` multiplies the gradient that reaches them from the losses.
    """

    SHARED = ("frontend", "normalize", "preencoder", "encoder")

    def __init__(self, **kwargs):
        super().__init__(specaug=None, **kwargs)
        for name in self.SHARED:
            # None-valued attributes are plain attributes already.
            module = self._modules.pop(name, None)
            if module is not None:
                object.__setattr__(self, name, module)
        self.encoder_grad_scale = 1.0

    def encode(self, *args, **kwargs) -> Dict:
        data = super().encode(*args, **kwargs)
        scale = self.encoder_grad_scale
        data["features"] = scale_gradient(data["features"], scale)
        data["encoder_output"] = [
            scale_gradient(x, scale) for x in data["encoder_output"]
        ]
        data["label_hidden"] = {
            layer: (scale_gradient(hidden, scale), lengths)
            for layer, (hidden, lengths) in data["label_hidden"].items()
        }
        return data


class BlJustBranch(torch.nn.Module):
    """What BL-JUST adds to an ASR model: the SSL branch and the schedule."""

    def __init__(self, ssl: SharedEncoderSSLModel, schedule: BlJustSchedule):
        super().__init__()
        self.ssl = ssl
        self.schedule = schedule


class BlJustASRModel(ESPnetASRModel):
    """ESPnet's ASR model trained with BL-JUST (see the module docstring).

    Built with :meth:`from_asr_model`. Evaluation-mode calls (validation, decoding) are
    those of :class:`ESPnetASRModel`; training calls take a labelled batch (``speech``,
    ``text``) and an unlabelled one (``unlabelled_speech``): the final phase needs no
    unlabelled batch and the exploration phase no labelled one (a labelled batch given
    to an exploration update is ignored).
    """

    bljust: BlJustBranch

    @classmethod
    def from_asr_model(
        cls, asr_model: ESPnetASRModel, branch: BlJustBranch
    ) -> "BlJustASRModel":
        # Re-typed rather than rebuilt: ASRTask.build_model keeps handling every ESPnet
        # ASR option (frontends, decoders, ...), and the state dict keeps ESPnet's keys.
        if type(asr_model) is not ESPnetASRModel:
            raise TypeError(
                f"BL-JUST trains ESPnet's 'espnet' ASR model, got "
                f"{type(asr_model).__name__} (--model must be espnet)"
            )
        asr_model.__class__ = cls
        asr_model.bljust = branch
        return asr_model

    def forward(
        self,
        speech: Optional[torch.Tensor] = None,
        speech_lengths: Optional[torch.Tensor] = None,
        text: Optional[torch.Tensor] = None,
        text_lengths: Optional[torch.Tensor] = None,
        unlabelled_speech: Optional[torch.Tensor] = None,
        unlabelled_speech_lengths: Optional[torch.Tensor] = None,
        bljust_epoch: Optional[torch.Tensor] = None,
        **kwargs,
    ) -> Tuple[torch.Tensor, Dict[str, Optional[torch.Tensor]], torch.Tensor]:
        if not self.training:
            return super().forward(speech, speech_lengths, text, text_lengths, **kwargs)
        schedule = self.bljust.schedule
        if bljust_epoch is not None:
            schedule.start_epoch(int(bljust_epoch.reshape(-1)[0]))
        phase = schedule.phase()
        if phase != FINAL and unlabelled_speech is None:
            raise ValueError(
                f"BL-JUST {PHASES[phase]} update without an unlabelled batch: train "
                "with the BL-JUST task's data loader (--unlabelled_data_path_and_name_and_type)"
            )
        if phase != EXPLORATION and (speech is None or text is None):
            raise ValueError(
                f"BL-JUST {PHASES[phase]} update without a labelled batch: the data "
                "loader leaves it out of the first exploration_updates x accum_grad "
                "batches of an epoch only; their updates must be exploration updates"
            )
        gamma = schedule.gamma()
        # The batch's weight (reporter averages, data-parallel loss averaging): its
        # labelled utterances, or its unlabelled ones in an exploration update that
        # loaded no labelled batch.
        counted = speech if speech is not None else unlabelled_speech
        weight = torch.tensor(counted.shape[0], device=counted.device)
        stats: Dict[str, Optional[torch.Tensor]] = {}
        loss_sup = loss_ssl = None
        if phase != EXPLORATION:
            loss_sup, sup_stats, _ = super().forward(
                speech, speech_lengths, text, text_lengths, **kwargs
            )
            loss_sup = loss_sup.reshape(())
            stats.update(sup_stats)
        if phase != FINAL:
            self.bljust.ssl.encoder_grad_scale = 1.0 if phase == EXPLORATION else gamma
            loss_ssl, ssl_stats, _ = self.bljust.ssl(
                unlabelled_speech, unlabelled_speech_lengths
            )
            loss_ssl = loss_ssl.reshape(())
            clash = (set(ssl_stats) - {"loss"}) & set(stats)
            if clash:
                raise RuntimeError(f"SSL and ASR statistics clash: {sorted(clash)}")
            stats.update({k: v for k, v in ssl_stats.items() if k != "loss"})
        stats["loss_sup"] = None if loss_sup is None else loss_sup.detach()
        stats["loss_ssl"] = None if loss_ssl is None else loss_ssl.detach()
        stats["gamma"] = torch.tensor(gamma if phase == JOINT else 0.0)
        stats["phase"] = torch.tensor(float(phase))
        if phase == JOINT:
            # The value of the objective whose encoder gradient this update follows.
            shown = schedule.penalty_objective(
                loss_sup.detach(), loss_ssl.detach(), gamma
            )
            schedule.update_v(loss_ssl)
            # Backward: the SSL branch already scales the encoder's share by gamma.
            loss = loss_sup + loss_ssl
        elif phase == EXPLORATION:
            loss = shown = loss_ssl
        else:
            loss = shown = loss_sup
        stats["loss"] = shown.detach()
        loss, stats, weight = force_gatherable(
            (loss, stats, weight), loss.device
        )
        return loss, stats, weight


def register_lr_scale_hooks(
    model: torch.nn.Module, optimizers: Iterable[torch.optim.Optimizer]
) -> List[BlJustSchedule]:
    """Scale the learning rate of every optimiser step by the schedules' ``lr_scale()``.

    The rate is multiplied just before ``step()`` and restored just after, so learning-
    rate schedulers (which set or read the rate between steps) are unaffected.
    """
    schedules = [m for m in model.modules() if isinstance(m, BlJustSchedule)]
    if not schedules:
        return schedules

    def current_scale() -> float:
        scale = 1.0
        for schedule in schedules:
            scale *= schedule.lr_scale()
        return scale

    for optimizer in optimizers:
        saved: List[float] = []

        def pre_hook(optimizer, args, kwargs, saved=saved):
            scale = current_scale()
            saved[:] = [group["lr"] for group in optimizer.param_groups]
            if scale != 1.0:
                for group in optimizer.param_groups:
                    group["lr"] = group["lr"] * scale

        def post_hook(optimizer, args, kwargs, saved=saved):
            for group, lr in zip(optimizer.param_groups, saved):
                group["lr"] = lr

        optimizer.register_step_pre_hook(pre_hook)
        optimizer.register_step_post_hook(post_hook)
    return schedules
