"""BiRQ: BEST-RQ anchoring labels plus self-made enhanced labels, trained bilevel.

BiRQ (Jiang et al., arXiv 2509.15430) as implemented here (docs/method.md). The
defaults are the published method:

- anchoring labels y_a: BEST-RQ codes of the unmasked normalised input
  (:class:`espnet2_birq.losses.best_rq.BestRQLoss`, unchanged; its statistics keep
  the ``best_rq_`` prefix, so BEST-RQ and BiRQ runs report the same anchoring figures);
- enhanced labels y_e: the output of encoder block ``label_layer`` (default: 70% of
  the depth) on the unmasked input (the model runs that pass, see ``BirqSSLModel``),
  layer-normalised without affine parameters, projected by a second frozen random
  matrix and scored against a second frozen l2-normalised codebook (cosine
  similarity). The label is a hard Gumbel-softmax sample of those scores at
  temperature 0.5 (``label_noise: 1``, ``tau: 0.5``) with the straight-through
  gradient, so the enhanced loss reaches blocks <= ``label_layer`` through the labels
  as well as through the prediction;
- one head per label set on the masked forward;
- the first-order penalty form of the bilevel problem: each update follows
  ``enhanced_weight * grad L_e + anchor_weight * grad L_a`` with constant weights
  0.1 and 2.4 (the optimum of the anchoring loss is a constant and drops out).

Additions of this project, all off by default: a warm-up of pure BEST-RQ and a ramp of
the anchoring weight (``gamma_*``, ``warmup_steps``), a running estimate ``v`` of the
anchoring optimum subtracted from the reported loss, per-utterance standardisation of
block k (``label_norm: instance``), stop-gradient labels, a diversity penalty and
soft targets. All schedule state (update count, ``v``) is in buffers, hence in every
checkpoint; gamma and tau are pure functions of the optimiser-update count.
"""

import math
from typing import Dict, List, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from typeguard import typechecked

from espnet2.ssl.loss.abs_loss import AbsSSLLoss
from espnet2_birq.bilevel import PenaltySchedule
from espnet2_birq.losses.best_rq import BestRQLoss
from espnet2_birq.losses.common import check_alignment, code_usage
from espnet2_birq.losses.gumbel import StraightThroughGumbelCE, gumbel_noise


LABEL_NORMS = ("instance", "layer")

#: Published BiRQ: enhanced labels from about 70% of the encoder's depth.
LABEL_LAYER_FRACTION = 0.7


def default_label_layer(num_encoder_layers: int) -> int:
    """``round(0.7 * depth)`` (halves round up), at least 1: 7 of 10, 4 of 5, 3 of 4."""
    return max(1, int(math.floor(LABEL_LAYER_FRACTION * num_encoder_layers + 0.5)))


def _at_least_float32(dtype: torch.dtype) -> torch.dtype:
    """float32 for half precision, float64 kept (exact gradient tests)."""
    return torch.promote_types(dtype, torch.float32)


class LabelPass(NamedTuple):
    """What a self-labelling loss asks the model to compute (see ``BirqSSLModel``).

    layer: number of encoder blocks to run on the unmasked input.
    needs_grad: build a graph through that pass (gradients through the labels).
    dropout: run it in training mode (dropout on, batch-norm statistics updated);
        False runs it as a teacher labels, in evaluation mode, keeping the graph.
    """

    layer: int
    needs_grad: bool
    dropout: bool


class BiRQLoss(AbsSSLLoss):
    """Bilevel self-labelling loss of BiRQ.

    ``encoder_output_size``, ``input_size``, ``subsampling_factor`` and
    ``num_encoder_layers`` are filled in by the task; everything else is a YAML key of
    ``loss: [{name: birq, conf: {...}}]`` (README "Configuration keys").

    Args:
        codebook_size, code_dim, num_codebooks, seed: anchoring (BEST-RQ) quantiser.
        enhanced_weight, anchor_weight: Constant weights of the enhanced and the
            anchoring loss in the update (published: 0.1 and 2.4, i.e. a penalty
            constant of 24 on the anchoring task).
        anchor_layer: Encoder layer feeding the anchoring head (-1: final).
        label_layer: Block k whose unmasked output is labelled (None:
            ``round(0.7 * depth)``, as published).
        enhanced_codebook_size, enhanced_code_dim, enhanced_seed: enhanced quantiser
            (``enhanced_seed`` must differ from ``seed``: independent draws).
        enhanced_layer: Encoder layer feeding the enhanced head (-1: final).
        label_norm: Normalisation of the labelled frames before the random
            projection. ``layer`` (published): layer norm without affine parameters.
            ``instance`` (an addition): first standardise every dimension over the
            utterance's frames, as CMVN does for BEST-RQ's input; without it the
            frames share a large common component and a random network's labels fall
            on a handful of codes (docs/method.md).
        label_noise: Scale of the Gumbel noise added to the cosine scores before the
            arg-max that picks the label. 1 (published): a Gumbel-softmax sample of
            the cosine scores; 0 (an addition): the noise-free arg-max. With
            thousands of codes in 16 dimensions neighbouring scores differ by about
            0.01, so a sample at scale 1 is far from the arg-max: code usage is
            logged on the arg-max (``birq_ppl_e``) and the agreement of the sample
            with it (``birq_label_agreement``).
        tau_start, tau_end, tau_decay: Gumbel-softmax temperature of the soft sample
            ``softmax((cos + noise) / tau)`` the gradient goes through:
            ``max(tau_end, tau_start * tau_decay ** updates)`` (published: 0.5,
            constant). The hard label itself does not depend on it.
        soft_targets: Train on the soft sample itself instead of the hard
            straight-through one-hot (the publication does not say which; hard is
            the default).
        label_grad_scale: Factor on the straight-through gradient into the label
            generator (its magnitude grows like 1 / tau).
        stop_gradient_labels: Enhanced labels without gradient (the unmasked pass then
            builds no graph): an addition, the cheap self-labelling variant.
        label_dropout: Run the labelling pass in training mode (dropout on, batch-norm
            statistics updated a second time). Default off, as teachers label.
        diversity_weight: Weight of a codebook-diversity penalty ``(K - ppl) / K`` of
            the batch-mean ``softmax(cos / tau)`` (wav2vec 2.0's diversity loss). An
            addition to the published method (README: ablation); 0 turns it off.
        gamma_schedule, gamma_0, gamma_max, gamma_ramp_steps, gamma_step_interval,
        warmup_steps, v_momentum: an addition: a schedule ``gamma_t`` multiplying
            ``anchor_weight`` and a warm-up of pure anchoring updates
            (:class:`espnet2_birq.bilevel.PenaltySchedule`). Published: constant 1,
            no warm-up.
        subtract_value_estimate: An addition: subtract ``v``, a running average of the
            anchoring loss, from it in the reported objective. ``v`` carries no
            gradient, so the update is unchanged; off, the objective is the plain
            weighted sum the publication minimises.
    """

    @typechecked
    def __init__(
        self,
        encoder_output_size: int,
        input_size: int,
        subsampling_factor: int,
        num_encoder_layers: int,
        codebook_size: int = 8192,
        code_dim: int = 16,
        num_codebooks: int = 1,
        seed: int = 0,
        enhanced_weight: float = 0.1,
        anchor_weight: float = 2.4,
        anchor_layer: int = -1,
        label_layer: Optional[int] = None,
        enhanced_codebook_size: int = 8192,
        enhanced_code_dim: int = 16,
        enhanced_seed: int = 1,
        enhanced_layer: int = -1,
        label_norm: str = "layer",
        label_noise: float = 1.0,
        tau_start: float = 0.5,
        tau_end: float = 0.5,
        tau_decay: float = 1.0,
        soft_targets: bool = False,
        label_grad_scale: float = 1.0,
        stop_gradient_labels: bool = False,
        label_dropout: bool = False,
        diversity_weight: float = 0.0,
        gamma_schedule: str = "constant",
        gamma_0: float = 1.0,
        gamma_max: float = 1.0,
        gamma_ramp_steps: int = 0,
        gamma_step_interval: int = 1000,
        warmup_steps: int = 0,
        v_momentum: float = 0.99,
        subtract_value_estimate: bool = False,
    ):
        super().__init__()
        if label_layer is None:
            label_layer = default_label_layer(num_encoder_layers)
        if not 1 <= label_layer <= num_encoder_layers:
            raise ValueError(
                f"label_layer must be in 1..{num_encoder_layers}, got {label_layer}"
            )
        if not 0 < tau_end <= tau_start:
            raise ValueError("need 0 < tau_end <= tau_start")
        if not 0 < tau_decay <= 1:
            raise ValueError("tau_decay must be in (0, 1]")
        if enhanced_seed == seed:
            raise ValueError("enhanced_seed must differ from the anchoring seed")
        if label_norm not in LABEL_NORMS:
            raise ValueError(f"label_norm must be one of {LABEL_NORMS}, got {label_norm}")
        if diversity_weight < 0 or label_noise < 0 or label_grad_scale < 0:
            raise ValueError(
                "diversity_weight, label_noise and label_grad_scale must be >= 0"
            )
        if enhanced_weight < 0 or anchor_weight <= 0:
            raise ValueError("need enhanced_weight >= 0 and anchor_weight > 0")

        self.util_attributes = {"span_mask"}
        self.required_inputs = [
            "features",
            "feature_lengths",
            "encoder_output",
            "mask_info",
            "label_hidden",
            "rng",
        ]
        self.label_layer = label_layer
        self.enhanced_weight = enhanced_weight
        self.anchor_weight = anchor_weight
        self.soft_targets = soft_targets
        self.subtract_value_estimate = subtract_value_estimate
        self.enhanced_layer = enhanced_layer
        self.enhanced_codebook_size = enhanced_codebook_size
        self.label_norm = label_norm
        self.label_noise = label_noise
        self.tau_start, self.tau_end, self.tau_decay = tau_start, tau_end, tau_decay
        self.label_grad_scale = label_grad_scale
        self.stop_gradient_labels = stop_gradient_labels
        self.label_dropout = label_dropout
        self.diversity_weight = diversity_weight

        self.anchor = BestRQLoss(
            encoder_output_size=encoder_output_size,
            input_size=input_size,
            subsampling_factor=subsampling_factor,
            codebook_size=codebook_size,
            code_dim=code_dim,
            num_codebooks=num_codebooks,
            seed=seed,
            layer=anchor_layer,
        )
        generator = torch.Generator().manual_seed(enhanced_seed)
        bound = math.sqrt(6.0 / (encoder_output_size + enhanced_code_dim))
        projection = torch.empty(encoder_output_size, enhanced_code_dim)
        projection.uniform_(-bound, bound, generator=generator)
        codebook = torch.randn(
            enhanced_codebook_size, enhanced_code_dim, generator=generator
        )
        self.register_buffer("enhanced_projection", projection)
        self.register_buffer("enhanced_codebook", F.normalize(codebook, dim=-1))
        self.enhanced_head = torch.nn.Linear(
            encoder_output_size, enhanced_codebook_size
        )
        self.bilevel = PenaltySchedule(
            gamma_schedule=gamma_schedule,
            gamma_0=gamma_0,
            gamma_max=gamma_max,
            gamma_ramp_steps=gamma_ramp_steps,
            gamma_step_interval=gamma_step_interval,
            warmup_steps=warmup_steps,
            v_momentum=v_momentum,
        )

    # ----------------------------------------------------------------- schedules
    @property
    def num_updates(self) -> int:
        return int(self.bilevel.num_updates)

    def tau(self, step: Optional[int] = None) -> float:
        """Temperature of the straight-through soft sample after ``step`` updates."""
        if self.tau_decay == 1.0:
            # constant (published): no read of the device-side update counter
            return max(self.tau_end, self.tau_start)
        step = self.bilevel.step_index(step)
        return max(self.tau_end, self.tau_start * self.tau_decay**step)

    def gamma(self, step: Optional[int] = None) -> float:
        return self.bilevel.gamma(step)

    def in_warmup(self, step: Optional[int] = None) -> bool:
        return self.bilevel.in_warmup(step)

    def label_pass(self) -> LabelPass:
        """The unmasked pass this loss needs from the model for the current step.

        No graph with stop-gradient labels, nor during the warm-up: the enhanced loss
        then enters with weight 0, so a graph through the first k blocks would only
        cost a backward pass that adds zeros.
        """
        needs_grad = not self.stop_gradient_labels and not (
            self.training and self.in_warmup()
        )
        return LabelPass(self.label_layer, needs_grad, self.label_dropout)

    # -------------------------------------------------------------------- labels
    def normalise_label_hidden(
        self, hidden: torch.Tensor, lengths: torch.Tensor
    ) -> torch.Tensor:
        """``label_norm`` of block k's output, in fp32 with autocast off.

        Args:
            hidden: (B, T, D) frames of block ``label_layer`` on the unmasked input.
            lengths: (B,) valid frames (padding stays out of the statistics).

        Returns:
            (B, T, D) normalised frames.
        """
        with torch.autocast(device_type=hidden.device.type, enabled=False):
            hidden = hidden.to(_at_least_float32(hidden.dtype))
            if self.label_norm == "instance":
                valid = (
                    torch.arange(hidden.shape[1], device=hidden.device)[None, :]
                    < lengths.to(hidden.device)[:, None]
                )[..., None].to(hidden.dtype)
                count = valid.sum(dim=1, keepdim=True).clamp(min=1.0)
                mean = (hidden * valid).sum(dim=1, keepdim=True) / count
                var = (((hidden - mean) * valid) ** 2).sum(dim=1, keepdim=True) / count
                hidden = (hidden - mean) * torch.rsqrt(var + 1e-5)
            return F.layer_norm(hidden, hidden.shape[-1:])

    def enhanced_cosines(self, normed: torch.Tensor) -> torch.Tensor:
        """Cosine similarity of normalised frames to the enhanced codebook.

        Computed in fp32 with autocast off (like the anchoring quantiser): under
        bf16 the scores of neighbouring codes, about 0.01 apart, would be rounded.

        Args:
            normed: (..., D) output of :meth:`normalise_label_hidden`.

        Returns:
            (..., K) cosine similarities.
        """
        with torch.autocast(device_type=normed.device.type, enabled=False):
            dtype = _at_least_float32(normed.dtype)
            projected = F.normalize(
                normed.to(dtype) @ self.enhanced_projection.to(dtype), dim=-1
            )
            return projected @ self.enhanced_codebook.to(dtype).t()

    def selection_noise(
        self, like: torch.Tensor, generator: Optional[torch.Generator] = None
    ) -> Optional[torch.Tensor]:
        """``label_noise`` x Gumbel noise in training, None otherwise (arg-max)."""
        if not self.training or self.label_noise == 0.0:
            return None
        return gumbel_noise(like, generator).mul_(self.label_noise)

    @torch.no_grad()
    def enhanced_labels(
        self,
        hidden: torch.Tensor,
        lengths: torch.Tensor,
        generator: Optional[torch.Generator] = None,
    ) -> torch.Tensor:
        """(B, T) labels of block k's output ``hidden`` (B, T, D), selected as in training."""
        cosines = self.enhanced_cosines(self.normalise_label_hidden(hidden, lengths))
        noise = self.selection_noise(cosines, generator)
        return (cosines if noise is None else cosines + noise).argmax(dim=-1)

    # ------------------------------------------------------------------- forward
    def forward(
        self,
        features: torch.Tensor,
        feature_lengths: torch.Tensor,
        encoder_output: List[torch.Tensor],
        mask_info: Dict[str, torch.Tensor],
        label_hidden: Dict[int, Tuple[torch.Tensor, torch.Tensor]],
        rng: Optional[torch.Generator] = None,
    ) -> Tuple[torch.Tensor, Dict]:
        """Compute ``w_e L_e + w_a gamma (L_a [- v]) + diversity_weight * L_div``.

        Published: ``0.1 L_e + 2.4 L_a`` (gamma 1, no ``v``, no diversity term).
        During a warm-up (an addition) the loss is ``w_a L_a`` alone (pure BEST-RQ).

        Args:
            features: (B, L, D) normalised unmasked features.
            feature_lengths: (B,) valid frames.
            encoder_output: per-layer (B, T_out, D') outputs of the masked forward.
            mask_info: masking output (``mask_m``, ``mask_u``, ``output_lengths``).
            label_hidden: {label_layer: ((B, T_out, D'), lengths)} from the unmasked
                pass through the first ``label_layer`` blocks.
            rng: this step's random stream (per rank) for the selection noise.
        """
        anchor_loss, anchor_stats = self.anchor(
            features, feature_lengths, encoder_output, mask_info
        )
        mask_m = mask_info["mask_m"]
        warmup = self.training and self.in_warmup()
        gamma = self.gamma()
        tau = self.tau()
        stats = dict(anchor_stats)
        stats.update({"birq_gamma": 0.0 if warmup else gamma, "birq_tau": tau})

        hidden, hidden_lengths = label_hidden[self.label_layer]
        target_hidden = encoder_output[self.enhanced_layer]
        if hidden.shape[1] != target_hidden.shape[1]:
            raise RuntimeError(
                f"label layer output has {hidden.shape[1]} frames, encoder output "
                f"{target_hidden.shape[1]}"
            )
        hidden = check_alignment(
            hidden, mask_info["frame_lengths"], mask_info, target_hidden, "birq"
        )
        # Only masked frames are predicted, so only they are labelled: the
        # codebook-wide work runs on about a third of the frames.
        with torch.set_grad_enabled(
            torch.is_grad_enabled() and not self.stop_gradient_labels
        ):
            lengths = torch.minimum(hidden_lengths, mask_info["frame_lengths"])
            normed = self.normalise_label_hidden(hidden, lengths)
            cosines = self.enhanced_cosines(normed[mask_m])
        noise = self.selection_noise(cosines, rng)
        # scores = cos / tau; noise on the cosine scale becomes noise / tau on it.
        scores = cosines / tau
        head_logits = self.enhanced_head(target_hidden[mask_m])
        enhanced_loss, diversity_loss, label_index, head_argmax = (
            StraightThroughGumbelCE.apply(
                scores,
                None if noise is None else noise / tau,
                head_logits,
                self.label_grad_scale,
                self.soft_targets,
            )
        )
        with torch.no_grad():
            argmax_index = cosines.argmax(dim=-1)
            accuracy = (head_argmax == label_index).float().mean()
            agreement = (label_index == argmax_index).float().mean()
            # Code usage of the noise-free arg-max labels: a collapsed generator
            # shows a perplexity near 1 here, whatever the noise hides.
            perplexity, distinct = code_usage(
                argmax_index[:, None], self.enhanced_codebook_size
            )
        if argmax_index.numel() == 0:
            accuracy = agreement = hidden.new_zeros(())
        stats.update(
            {
                "birq_loss_e": enhanced_loss.detach(),
                "birq_acc_e": accuracy,
                "birq_ppl_e": perplexity,
                "birq_codes_e": distinct,
                "birq_label_agreement": agreement,
                "birq_diversity": diversity_loss.detach(),
            }
        )

        if self.training:
            self.bilevel.update_v(anchor_loss)
        stats["birq_v"] = self.bilevel.v.detach().clone()
        if warmup:
            # Pure BEST-RQ; the enhanced head still sees its loss through a zero
            # weight so DDP finds every parameter used in every step.
            total = self.anchor_weight * anchor_loss + 0.0 * enhanced_loss
        else:
            lower = anchor_loss
            if self.subtract_value_estimate:
                lower = anchor_loss - self.bilevel.v.detach()
            total = (
                self.enhanced_weight * enhanced_loss
                + (self.anchor_weight * gamma) * lower
            )
            if self.diversity_weight:
                total = total + self.diversity_weight * diversity_loss
        stats["birq_loss"] = total.detach()
        return total, stats
