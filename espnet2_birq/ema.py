"""Exponential-moving-average (EMA) teacher of the encoder (data2vec / MT4SSL targets).

The teacher is a copy of the student encoder's blocks whose weights follow the student's:

    teacher <- decay * teacher + (1 - decay) * student

after every optimiser update, with ``decay`` annealed linearly from ``decay_start`` to
``decay_end`` over ``anneal_updates`` updates and held at ``decay_end`` afterwards.

As in MT4SSL's and data2vec's code (``ema_transformer_only``), the input layer
(``encoder.embed``: the convolutional subsampling, its projection and the positional
encoding) is not copied: the teacher runs the *student's* current input layer on the
unmasked input, in evaluation mode and without gradient, then its own averaged blocks.
``include_front: true`` copies and averages the input layer too (the project's earlier
teacher).

Besides every block's output, the teacher returns the output of every block's final
feed-forward module (``feed_forward``) before the residual connection adds it back:
data2vec's and MT4SSL's regression targets (their ``layer_results[i][2]``).

The teacher's tensors are **buffers**, not parameters: the optimiser never sees them,
DDP synchronises no gradient for them, and they are saved in every checkpoint with
the update counter, so a resumed run continues with the same teacher. The task also
leaves them out of DDP's buffer broadcast (a whole encoder at every forward): every
rank averages the same synchronised student parameters. Only the batch-norm statistics,
copied from each rank's student after its own forward, may differ between ranks by one
batch's update. The student is held by reference, outside the module tree (its weights are
not saved twice).

The interface matches the ``ema`` util ESPnet 202511's SSL model calls
(``update_device_and_type``, ``step(global_step, encoder)``, ``get_decay`` and a forward
with ``return_all_hs``). :class:`espnet2_birq.ssl_model.BirqSSLModel` does not call
``step``: the update hook of :func:`espnet2_birq.bilevel.register_update_hooks` calls
:meth:`EMATeacher.on_optimizer_step`, which counts optimiser updates rather than
forward passes (they differ under gradient accumulation).
"""

import copy
from typing import Dict, List, Optional, Tuple

import torch
from typeguard import typechecked

from espnet.nets.pytorch_backend.nets_utils import make_pad_mask
from espnet2_birq.ssl_model import apply_input_layer, evaluation_mode

#: Prefix of the input layer's tensors in an ESPnet encoder's state dict.
FRONT_PREFIX = "embed."


def _parameters_to_buffers(module: torch.nn.Module) -> None:
    """Turn every parameter of ``module`` (recursively) into a buffer of the same name."""
    for submodule in module.modules():
        for name, param in list(submodule._parameters.items()):
            del submodule._parameters[name]
            # An absent parameter (bias=False) stays an absent (None) buffer.
            submodule.register_buffer(
                name, None if param is None else param.detach().clone()
            )


class EMATeacher(torch.nn.Module):
    """EMA copy of an encoder's blocks, run in evaluation mode without gradients.

    ``encoder`` is filled in by the task (the student encoder); the remaining arguments
    are the YAML ``util: [{name: ema, conf: {...}}]`` keys.

    Args:
        encoder: The student encoder to follow.
        decay_start: Decay at update 0 (MT4SSL, data2vec: 0.999).
        decay_end: Decay from ``anneal_updates`` on (0.9999).
        anneal_updates: Optimiser updates of the linear anneal (0: ``decay_end`` at once).
        include_front: Copy and average the input layer (``encoder.embed``) too; false
            (MT4SSL, data2vec): the teacher uses the student's input layer.
    """

    @typechecked
    def __init__(
        self,
        encoder: torch.nn.Module,
        decay_start: float = 0.999,
        decay_end: float = 0.9999,
        anneal_updates: int = 30000,
        include_front: bool = False,
    ):
        super().__init__()
        if not (0.0 <= decay_start <= 1.0 and 0.0 <= decay_end <= 1.0):
            raise ValueError(
                f"decay_start and decay_end must be in [0, 1], got {decay_start}, {decay_end}"
            )
        if anneal_updates < 0:
            raise ValueError(f"anneal_updates must be >= 0, got {anneal_updates}")
        self.decay_start = decay_start
        self.decay_end = decay_end
        self.anneal_updates = anneal_updates
        self.include_front = include_front
        teacher = copy.deepcopy(encoder)
        if not include_front and isinstance(getattr(teacher, "embed", None), torch.nn.Module):
            teacher.embed = None  # the student's input layer is used
        _parameters_to_buffers(teacher)
        teacher.requires_grad_(False)
        self.teacher = teacher
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))
        # False until the teacher is copied from the student, at the first forward:
        # after ``--init`` or ``--init_param`` (which change the student after this
        # copy was made) the teacher starts as the student actually trained, while a
        # checkpoint that holds a teacher (resume) brings its own, already synced.
        self.register_buffer("synced", torch.zeros((), dtype=torch.bool))
        # A plain attribute (not a submodule): the student is saved once, as the model's
        # encoder, and stays outside this module's state dict.
        self._student: Tuple[torch.nn.Module, ...] = (encoder,)

    def extra_repr(self) -> str:
        return (
            f"decay_start={self.decay_start}, decay_end={self.decay_end}, "
            f"anneal_updates={self.anneal_updates}, include_front={self.include_front}"
        )

    def is_averaged(self, name: str) -> bool:
        """Whether the student tensor ``name`` has a teacher copy (not the input layer)."""
        return self.include_front or not name.startswith(FRONT_PREFIX)

    @property
    def student(self) -> torch.nn.Module:
        return self._student[0]

    # ----------------------------------------------------------------- schedule
    def get_decay(self, num_updates: Optional[int] = None) -> float:
        """Decay of the update that follows ``num_updates`` updates (default: now)."""
        step = int(self.num_updates) if num_updates is None else num_updates
        if self.anneal_updates == 0 or step >= self.anneal_updates:
            return self.decay_end
        fraction = step / self.anneal_updates
        return self.decay_start + (self.decay_end - self.decay_start) * fraction

    # ------------------------------------------------------------------ updates
    @torch.no_grad()
    def copy_student(self) -> None:
        """Make the teacher an exact copy of the student."""
        self._apply_update(0.0)
        self.synced.fill_(True)

    @torch.no_grad()
    def _apply_update(self, decay: float) -> None:
        teacher = dict(self.teacher.named_buffers())
        for name, value in self.student.named_parameters():
            if not self.is_averaged(name):
                continue
            target = teacher[name]
            target.mul_(decay).add_(value.detach().to(target.dtype), alpha=1.0 - decay)
        # Non-parameter buffers (batch-norm statistics, positional tables) are copied.
        parameter_names = {name for name, _ in self.student.named_parameters()}
        for name, value in self.student.named_buffers():
            if name not in parameter_names and self.is_averaged(name):
                teacher[name].copy_(value)

    @torch.no_grad()
    def on_optimizer_step(self) -> None:
        """One EMA update after an optimiser update, then count it."""
        # (Training always runs a forward, which syncs, before its first update.)
        self.synced.fill_(True)
        self._apply_update(self.get_decay())
        self.num_updates.add_(1)

    @torch.no_grad()
    def step(self, global_step: int, encoder: Optional[torch.nn.Module] = None) -> None:
        """ESPnet's interface: one EMA update from ``encoder`` at update ``global_step``.

        Not called by :class:`~espnet2_birq.ssl_model.BirqSSLModel` (see the module
        docstring); provided for ESPnet's own SSL model.
        """
        if encoder is not None and encoder is not self.student:
            self._student = (encoder,)
        self.num_updates.fill_(int(global_step))
        self.on_optimizer_step()

    def update_device_and_type(
        self, device: torch.device, dtype: Optional[torch.dtype] = None
    ) -> None:
        """ESPnet's interface: move the teacher (it stays float32 under AMP)."""
        self.teacher.to(device=device)

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        feats: torch.Tensor,
        feats_lengths: torch.Tensor,
        masks: Optional[torch.Tensor] = None,
        return_all_hs: bool = True,
    ) -> Tuple[object, torch.Tensor, None]:
        """The teacher on ``feats``: no gradient, evaluation mode (no dropout).

        Returns what an ESPnet encoder returns with ``return_all_hs``: ``((final,
        layers), lengths, None)``, ``layers`` the output of every block. ``masks`` is
        accepted for ESPnet's interface and ignored (the lengths define the padding).
        """
        out = self.encode(feats, feats_lengths, keep=("layers",))
        if return_all_hs:
            return (out["final"], out["layers"]), out["lengths"], None
        return out["final"], out["lengths"], None

    def encode(
        self,
        feats: torch.Tensor,
        feats_lengths: torch.Tensor,
        keep: Tuple[str, ...] = ("layers", "ffn"),
    ) -> Dict:
        """Every block of the teacher on ``feats``, without gradient, in evaluation mode.

        The input layer is the student's (``include_front: false``) or the teacher's
        own copy; then the teacher's blocks, as the encoder's forward runs them.

        Args:
            feats, feats_lengths: The unmasked encoder input and its lengths.
            keep: Which per-block lists to keep (``layers``, ``ffn``); a list not kept
                is None (a whole encoder's worth of activations is not held for
                nothing).

        Returns:
            dict with ``layers`` (list of (B, T_out, d) block outputs, before the final
            norm), ``ffn`` (list of (B, T_out, d) outputs of each block's final
            feed-forward module before its residual connection; None when a block has
            no ``feed_forward`` module), ``final`` (the last block after the encoder's
            final norm, as the encoder's forward returns it) and ``lengths`` (B,).
        """
        if not bool(self.synced):
            self.copy_student()
        blocks = getattr(self.teacher, "encoders", None)
        if blocks is None:
            raise TypeError(
                f"the EMA teacher needs an encoder with an 'encoders' block list "
                f"(Transformer, Conformer, E-Branchformer), got {type(self.teacher).__name__}"
            )
        front = self.teacher.embed if self.include_front else getattr(self.student, "embed", None)
        feed_forwards = [getattr(block, "feed_forward", None) for block in blocks]
        ffn: List[torch.Tensor] = []
        hooks = [
            module.register_forward_hook(lambda module, args, output: ffn.append(output))
            for module in feed_forwards
            if module is not None and "ffn" in keep
        ]
        layers: List[torch.Tensor] = []
        last = None
        try:
            with torch.no_grad(), evaluation_mode(self.teacher):
                masks = (~make_pad_mask(feats_lengths, maxlen=feats.shape[1])[:, None, :]).to(
                    feats.device
                )
                x = feats
                if front is not None:
                    with evaluation_mode(front):
                        x, masks = apply_input_layer(front, x, masks)
                for block in blocks:
                    x, masks = block(x, masks)
                    last = x[0] if isinstance(x, tuple) else x
                    if "layers" in keep:
                        layers.append(last)
                final = last
                after_norm = getattr(self.teacher, "after_norm", None)
                if after_norm is not None and getattr(self.teacher, "normalize_before", True):
                    final = after_norm(final)
        finally:
            for hook in hooks:
                hook.remove()
        has_ffn = "ffn" in keep and None not in feed_forwards and len(ffn) == len(blocks)
        return {
            "layers": layers if "layers" in keep else None,
            "ffn": ffn if has_ffn else None,
            "final": final,
            "lengths": masks.squeeze(1).sum(dim=1),
        }

    def layer_outputs(
        self, feats: torch.Tensor, feats_lengths: torch.Tensor
    ) -> Tuple[List[torch.Tensor], torch.Tensor]:
        """Outputs of every teacher block (before the final norm) and their lengths."""
        out = self.encode(feats, feats_lengths, keep=("layers",))
        return out["layers"], out["lengths"]
