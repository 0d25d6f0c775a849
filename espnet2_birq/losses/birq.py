"""BiRQ: BEST-RQ anchoring labels plus self-made enhanced labels, trained bilevel.

METHOD.md section 2 (Jiang et al., arXiv 2509.15430, as reconstructed by this project):

- anchoring labels y_a: BEST-RQ codes of the unmasked normalised input
  (:class:`espnet2_birq.losses.best_rq.BestRQLoss`, unchanged);
- enhanced labels y_e: the output of encoder block ``label_layer`` on the unmasked
  input (computed by the model, see ``BirqSSLModel.encode``), layer-normalised without
  affine parameters, projected by a second frozen random matrix, scored against a
  second frozen l2-normalised codebook (cosine / tau), and selected with hard
  Gumbel-softmax. The straight-through estimator lets gradients flow from the
  enhanced loss into blocks <= ``label_layer`` through the labels;
- one head per label set on the masked forward;
- penalty bilevel objective (Shen & Chen, ICML 2023): the step minimises
  ``L_e + gamma_t * (L_a - v)`` where ``v`` estimates the lower-level optimum and
  carries no gradient, so one backward pass gives ``grad L_e + gamma_t grad L_a``.

All schedule state (update count, ``v``) is in buffers, hence in every checkpoint;
gamma and tau are pure functions of the update count, exact after resume.
"""

import math
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from typeguard import typechecked

from espnet2.ssl.loss.abs_loss import AbsSSLLoss
from espnet2_birq.losses.best_rq import BestRQLoss
from espnet2_birq.losses.common import check_alignment, code_usage
from espnet2_birq.losses.gumbel import StraightThroughGumbelCE, gumbel_noise

GAMMA_SCHEDULES = ("constant", "linear", "step")


class BiRQLoss(AbsSSLLoss):
    """Bilevel self-labelling loss of BiRQ.

    ``encoder_output_size``, ``input_size``, ``subsampling_factor`` and
    ``num_encoder_layers`` are filled in by the task; everything else is a YAML key of
    ``loss: [{name: birq, conf: {...}}]``.

    Args:
        codebook_size, code_dim, num_codebooks, seed: anchoring (BEST-RQ) quantiser.
        label_layer: Block k whose unmasked output is labelled (None: half the depth,
            a layer that already carries more than the input but is still cheap).
        enhanced_codebook_size: Entries of the enhanced codebook.
        enhanced_code_dim: Projection dimension of the enhanced quantiser.
        enhanced_seed: Seed of the enhanced projection and codebook (must differ from
            ``seed`` so the two label sets are independent draws).
        anchor_layer: Encoder layer feeding the anchoring head (-1: final).
        enhanced_layer: Encoder layer feeding the enhanced head (-1: final).
        stop_gradient_labels: Enhanced labels without gradient (the cheap
            self-labelling variant; the unmasked pass then builds no graph).
        tau_start, tau_end, tau_decay: Gumbel temperature
            ``max(tau_end, tau_start * tau_decay ** step)``, dividing the cosine scores
            (in [-1, 1]) before the Gumbel noise. Above ~0.5 the labels are near-uniform
            draws; far below 0.1 the straight-through gradient (scaled by 1 / tau)
            drives the labels to collapse (measured, see README).
        gamma_schedule: ``constant`` (gamma_max throughout), ``linear`` (gamma_0 to
            gamma_max over ``gamma_ramp_steps``) or ``step`` (the linear ramp held
            constant within blocks of ``gamma_step_interval`` updates, e.g. epochs).
        gamma_0, gamma_max, gamma_ramp_steps, gamma_step_interval: penalty schedule;
            the ramp starts when the warm-up ends.
        warmup_steps: Updates of pure BEST-RQ before the enhanced loss switches on
            (labels of a random network are noise).
        v_momentum: Momentum of the running estimate ``v`` of the lower-level loss.
        diversity_weight: Weight of a codebook-diversity penalty on the enhanced
            labels, ``(K - perplexity) / K`` of the batch-averaged assignment
            probabilities ``softmax(cos / tau)`` (wav2vec 2.0's diversity loss). With
            gradients flowing through the labels, collapsing every frame onto one
            code is the cheapest way to lower ``L_e``; measured on a tiny model, the
            anchoring term alone does not prevent that (see README).
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
        label_layer: Optional[int] = None,
        enhanced_codebook_size: int = 8192,
        enhanced_code_dim: int = 16,
        enhanced_seed: int = 1,
        anchor_layer: int = -1,
        enhanced_layer: int = -1,
        stop_gradient_labels: bool = False,
        tau_start: float = 0.2,
        tau_end: float = 0.1,
        tau_decay: float = 0.99995,
        gamma_schedule: str = "linear",
        gamma_0: float = 0.1,
        gamma_max: float = 1.0,
        gamma_ramp_steps: int = 10000,
        gamma_step_interval: int = 1000,
        warmup_steps: int = 1000,
        v_momentum: float = 0.99,
        diversity_weight: float = 5.0,
    ):
        super().__init__()
        if label_layer is None:
            label_layer = max(1, num_encoder_layers // 2)
        if not 1 <= label_layer <= num_encoder_layers:
            raise ValueError(
                f"label_layer must be in 1..{num_encoder_layers}, got {label_layer}"
            )
        if gamma_schedule not in GAMMA_SCHEDULES:
            raise ValueError(
                f"gamma_schedule must be one of {GAMMA_SCHEDULES}, got {gamma_schedule}"
            )
        if not 0 < tau_end <= tau_start:
            raise ValueError("need 0 < tau_end <= tau_start")
        if not 0 < tau_decay <= 1:
            raise ValueError("tau_decay must be in (0, 1]")
        if gamma_ramp_steps < 0 or gamma_step_interval < 1 or warmup_steps < 0:
            raise ValueError(
                "gamma_ramp_steps/warmup_steps must be >= 0, gamma_step_interval >= 1"
            )
        if enhanced_seed == seed:
            raise ValueError("enhanced_seed must differ from the anchoring seed")
        if not 0.0 <= v_momentum < 1.0:
            raise ValueError("v_momentum must be in [0, 1)")
        if diversity_weight < 0:
            raise ValueError("diversity_weight must be >= 0")

        self.util_attributes = {"span_mask"}
        self.required_inputs = [
            "features",
            "feature_lengths",
            "encoder_output",
            "mask_info",
            "label_hidden",
        ]
        self.label_layer = label_layer
        self.enhanced_layer = enhanced_layer
        self.stop_gradient_labels = stop_gradient_labels
        self.enhanced_codebook_size = enhanced_codebook_size
        self.tau_start, self.tau_end, self.tau_decay = tau_start, tau_end, tau_decay
        self.gamma_schedule = gamma_schedule
        self.gamma_0, self.gamma_max = gamma_0, gamma_max
        self.gamma_ramp_steps = gamma_ramp_steps
        self.gamma_step_interval = gamma_step_interval
        self.warmup_steps = warmup_steps
        self.v_momentum = v_momentum
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
        # Schedule state, saved with the model.
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))
        self.register_buffer("v", torch.zeros(()))
        self.register_buffer("v_initialized", torch.zeros((), dtype=torch.bool))

    # ----------------------------------------------------------------- schedules
    def step(self, global_step: torch.Tensor) -> None:
        """Called by ESPnet's SSL model before each training forward."""
        self.num_updates.fill_(int(global_step.reshape(-1)[0]))

    def tau(self, step: Optional[int] = None) -> float:
        """Gumbel-softmax temperature at ``step`` (default: now)."""
        step = int(self.num_updates) if step is None else step
        return max(self.tau_end, self.tau_start * self.tau_decay**step)

    def gamma(self, step: Optional[int] = None) -> float:
        """Penalty weight at ``step`` (default: now); the ramp starts after warm-up."""
        step = int(self.num_updates) if step is None else step
        if self.gamma_schedule == "constant":
            return self.gamma_max
        progress = max(0, step - self.warmup_steps)
        if self.gamma_schedule == "step":
            progress = (progress // self.gamma_step_interval) * self.gamma_step_interval
        if self.gamma_ramp_steps == 0:
            return self.gamma_max
        fraction = min(1.0, progress / self.gamma_ramp_steps)
        return self.gamma_0 + (self.gamma_max - self.gamma_0) * fraction

    def in_warmup(self, step: Optional[int] = None) -> bool:
        step = int(self.num_updates) if step is None else step
        return step < self.warmup_steps

    def labels_need_grad(self) -> bool:
        """Whether the unmasked prefix pass must build a graph for this step.

        Not with stop-gradient labels, and not during the warm-up: there the enhanced
        loss enters with weight 0, so a graph through the first k blocks would only
        cost a backward pass that adds zeros.
        """
        if self.stop_gradient_labels:
            return False
        return not (self.training and self.in_warmup())

    # -------------------------------------------------------------------- labels
    def enhanced_logits(self, hidden: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
        """Cosine similarity to the enhanced codebook, divided by ``tau``.

        Args:
            hidden: (..., D) frames of block ``label_layer`` on the unmasked input
                (the model passes the masked positions, (M, D)).
            tau: temperature; folded into the (K, d) codebook rather than dividing
                the (..., K) scores.

        Returns:
            (..., K) cosine similarities / tau.
        """
        normed = F.layer_norm(hidden, hidden.shape[-1:])
        projected = F.normalize(normed @ self.enhanced_projection, dim=-1)
        codebook = self.enhanced_codebook if tau == 1.0 else self.enhanced_codebook / tau
        return projected @ codebook.t()

    def label_scores(
        self, hidden: torch.Tensor
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Scores ``cos / tau`` and the Gumbel noise of the enhanced labels.

        The temperature scales the cosine scores *before* the noise:
        ``F.gumbel_softmax(cos, tau)`` would divide after adding it, so its hard sample
        ``argmax(cos + g)`` would ignore tau and, with ``|cos| <= 1`` against
        unit-scale noise, be close to a uniform draw. Evaluation uses no noise (the
        arg-max: deterministic validation).

        Args:
            hidden: (M, D) frames of block ``label_layer`` on the unmasked input.

        Returns:
            scores: (M, K), with gradient unless ``stop_gradient_labels``.
            noise: (M, K) Gumbel noise in training, None in evaluation.
        """
        with torch.set_grad_enabled(
            torch.is_grad_enabled() and not self.stop_gradient_labels
        ):
            scores = self.enhanced_logits(hidden, self.tau())
        noise = gumbel_noise(scores) if self.training else None
        return scores, noise

    @torch.no_grad()
    def enhanced_labels(self, hidden: torch.Tensor) -> torch.Tensor:
        """(M,) hard enhanced labels of ``hidden`` (M, D), sampled as in training."""
        scores, noise = self.label_scores(hidden)
        return (scores if noise is None else scores + noise).argmax(dim=-1)

    # ------------------------------------------------------------------- forward
    def forward(
        self,
        features: torch.Tensor,
        feature_lengths: torch.Tensor,
        encoder_output: List[torch.Tensor],
        mask_info: Dict[str, torch.Tensor],
        label_hidden: Dict[int, Tuple[torch.Tensor, torch.Tensor]],
    ) -> Tuple[torch.Tensor, Dict]:
        """Compute ``L_e + gamma * (L_a - v) + diversity_weight * L_div``.

        During the warm-up the loss is ``L_a`` alone (pure BEST-RQ).

        Args:
            features: (B, L, D) normalised unmasked features.
            feature_lengths: (B,) valid frames.
            encoder_output: per-layer (B, T_out, D') outputs of the masked forward.
            mask_info: masking output (``mask_m``, ``mask_u``, ``output_lengths``).
            label_hidden: {label_layer: ((B, T_out, D'), lengths)} from the unmasked
                pass through the first ``label_layer`` blocks.
        """
        anchor_loss, anchor_stats = self.anchor(
            features, feature_lengths, encoder_output, mask_info
        )
        mask_m = mask_info["mask_m"]
        warmup = self.training and self.in_warmup()
        gamma = self.gamma()
        stats = {
            "loss_a": anchor_loss.detach(),
            "acc_a": anchor_stats["best_rq_acc"],
            "ppl_a": anchor_stats["best_rq_ppl"],
            "codes_a": anchor_stats["best_rq_codes"],
            "mask_rate": anchor_stats["mask_rate"],
            "gamma": 0.0 if warmup else gamma,
            "tau": self.tau(),
        }

        hidden, _ = label_hidden[self.label_layer]
        target_hidden = encoder_output[self.enhanced_layer]
        if hidden.shape[1] != target_hidden.shape[1]:
            raise RuntimeError(
                f"label layer output has {hidden.shape[1]} frames, encoder output "
                f"{target_hidden.shape[1]}"
            )
        hidden = check_alignment(
            hidden,
            mask_info["frame_lengths"],
            mask_info,
            target_hidden,
            "birq enhanced",
        )
        # Only masked frames are predicted, so only they are labelled: the
        # codebook-wide work (scores, Gumbel sample, diversity) runs on about a third
        # of the frames instead of all of them.
        scores, noise = self.label_scores(hidden[mask_m])
        head_logits = self.enhanced_head(target_hidden[mask_m])
        enhanced_loss, diversity_loss, label_index, head_argmax = (
            StraightThroughGumbelCE.apply(scores, noise, head_logits)
        )
        with torch.no_grad():
            accuracy = (head_argmax == label_index).float().mean()
            perplexity, distinct = code_usage(
                label_index[:, None], self.enhanced_codebook_size
            )
        stats.update(
            {
                "diversity": diversity_loss.detach(),
                "loss_e": enhanced_loss.detach(),
                "acc_e": accuracy,
                "ppl_e": perplexity,
                "codes_e": distinct,
            }
        )

        if self.training:
            self._update_v(anchor_loss.detach())
        stats["v"] = self.v.detach().clone()
        if warmup:
            # Pure BEST-RQ; the enhanced head still sees its loss through a zero
            # weight so DDP finds every parameter used in every step.
            total = anchor_loss + 0.0 * enhanced_loss
        else:
            total = (
                enhanced_loss
                + gamma * (anchor_loss - self.v.detach())
                + self.diversity_weight * diversity_loss
            )
        stats["birq_loss"] = total.detach()
        return total, stats

    @torch.no_grad()
    def _update_v(self, anchor_loss: torch.Tensor) -> None:
        """Running estimate of the lower-level optimum (exponential average of L_a)."""
        if not bool(self.v_initialized):
            self.v.copy_(anchor_loss)
            self.v_initialized.fill_(True)
        else:
            self.v.mul_(self.v_momentum).add_((1 - self.v_momentum) * anchor_loss)
