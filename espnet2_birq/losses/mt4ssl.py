"""MT4SSL's two objectives as separate, composable losses (Ma et al., Interspeech 2023).

- :class:`KMeansCELoss` (offline targets): cluster ids of an offline k-means, one per
  encoder frame, read by the data loader as the ``frame_labels`` stream (the recipe's
  k-means step writes them); cross-entropy on masked frames, HuBERT style.
- :class:`EMARegressionLoss` (online targets): the student regresses, through a linear
  head, the average of the top ``top_k`` layers of an EMA teacher
  (:class:`espnet2_birq.ema.EMATeacher`, util ``ema``) that sees the unmasked input:
  each block's feed-forward output before its residual connection, instance-normalised
  over time; per masked frame the squared error summed over the ``D`` dimensions and
  divided by ``sqrt(D)``, averaged over the masked frames (MT4SSL's and data2vec's code).

MT4SSL is ``loss: [{name: kmeans_ce}, {name: ema_regression}]`` (weights 1.0) with
util ``learned_mask`` (``masking``: the learned mask embedding of wav2vec 2.0). Either
loss also composes with ``best_rq`` or ``birq`` when given ``masking: span_mask``, the
masking those use (one masked forward serves every loss).
"""

import math
from typing import Dict, List, Optional, Tuple

import torch
from typeguard import typechecked

from espnet2.ssl.loss.abs_loss import AbsSSLLoss
from espnet2_birq.losses.common import MaskedPredictionHeads, code_usage

#: Masking utils an MT4SSL loss may ask for (``masking`` key).
MASKINGS = ("learned_mask", "span_mask")
#: Teacher layers the regression may average (``target`` key of ``ema_regression``).
TARGETS = ("ffn", "block")
#: Scalings of the regression (``loss_scale`` key of ``ema_regression``).
LOSS_SCALES = ("sqrt_dim", "per_dim")


def _check_choice(key: str, value: str, choices: Tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{key} must be one of {', '.join(choices)}; got {value!r}")
    return value


def _check_frames(
    name: str, hidden: torch.Tensor, mask_info: Dict[str, torch.Tensor]
) -> None:
    if mask_info["mask_m"].shape[1] != hidden.shape[1]:
        raise RuntimeError(
            f"{name}: mask has {mask_info['mask_m'].shape[1]} frames but the encoder "
            f"produced {hidden.shape[1]}"
        )


class KMeansCELoss(AbsSSLLoss):
    """Predict offline (k-means) cluster ids at masked encoder frames.

    Args:
        encoder_output_size: Dimension of the encoder frames (filled in by the task).
        num_clusters: Number of k-means clusters (the recipe's k-means reads it here).
        layer: Encoder layer feeding the head (-1: final, normalised).
        weight: Factor on this loss in the sum of the losses.
        masking: The masking util it asks for: ``learned_mask`` (MT4SSL) or
            ``span_mask`` (BEST-RQ's noise spans, to compose with best_rq/birq).
    """

    @typechecked
    def __init__(
        self,
        encoder_output_size: int,
        num_clusters: int = 500,
        layer: int = -1,
        weight: float = 1.0,
        masking: str = "learned_mask",
    ):
        super().__init__()
        if num_clusters < 2:
            raise ValueError(f"num_clusters must be >= 2, got {num_clusters}")
        self.masking = _check_choice("masking", masking, MASKINGS)
        self.util_attributes = {masking}
        self.required_inputs = [
            "encoder_output",
            "mask_info",
            "frame_labels",
            "frame_labels_lengths",
        ]
        self.num_clusters = num_clusters
        self.layer = layer
        self.weight = weight
        self.heads = MaskedPredictionHeads(encoder_output_size, num_clusters, 1)

    def aligned_labels(
        self,
        frame_labels: Optional[torch.Tensor],
        frame_labels_lengths: Optional[torch.Tensor],
        mask_info: Dict[str, torch.Tensor],
        out_frames: int,
    ) -> torch.Tensor:
        """(B, T_out) labels of the encoder frames; refuses missing or short labels."""
        if frame_labels is None or frame_labels_lengths is None:
            raise RuntimeError(
                "kmeans_ce: the batch has no 'frame_labels' stream; give the data loader "
                "the k-means labels, e.g. --train_data_path_and_name_and_type "
                "labels.txt,frame_labels,text_int (ssl_asr.sh does this in stage 5)"
            )
        frame_lengths = mask_info["frame_lengths"].to(frame_labels_lengths.device)
        short = frame_labels_lengths < frame_lengths
        if bool(short.any()):
            index = int(short.nonzero()[0, 0])
            raise RuntimeError(
                f"kmeans_ce: utterance {index} of the batch has "
                f"{int(frame_labels_lengths[index])} labels for "
                f"{int(frame_lengths[index])} encoder frames; labels must be written "
                "one per encoder frame (floor(input frames / subsampling factor))"
            )
        labels = frame_labels.long()
        if labels.shape[1] < out_frames:
            labels = torch.nn.functional.pad(
                labels, (0, out_frames - labels.shape[1]), value=-1
            )
        labels = labels[:, :out_frames]
        valid = torch.arange(out_frames, device=labels.device)[None, :] < frame_lengths[:, None]
        bad = valid & ((labels < 0) | (labels >= self.num_clusters))
        if bool(bad.any()):
            raise RuntimeError(
                f"kmeans_ce: label {int(labels[bad][0])} outside 0..{self.num_clusters - 1}"
                " (num_clusters must match the k-means model)"
            )
        return labels

    def forward(
        self,
        encoder_output: List[torch.Tensor],
        mask_info: Dict[str, torch.Tensor],
        frame_labels: Optional[torch.Tensor],
        frame_labels_lengths: Optional[torch.Tensor],
    ) -> Tuple[torch.Tensor, Dict]:
        hidden = encoder_output[self.layer]
        _check_frames("kmeans_ce", hidden, mask_info)
        labels = self.aligned_labels(
            frame_labels, frame_labels_lengths, mask_info, hidden.shape[1]
        )
        mask_m = mask_info["mask_m"]
        loss, accuracy = self.heads(hidden[mask_m], labels[mask_m][:, None])
        valid = mask_m | mask_info["mask_u"]
        perplexity, distinct = code_usage(labels[valid][:, None], self.num_clusters)
        stats = {
            "kmeans_ce_loss": loss.detach(),
            "kmeans_ce_acc": accuracy,
            "kmeans_ce_ppl": perplexity,
            "kmeans_ce_clusters": distinct,
        }
        return self.weight * loss, stats


def masked_instance_norm(
    hidden: torch.Tensor, lengths: torch.Tensor, eps: float = 1e-5
) -> torch.Tensor:
    """Standardise every channel of every utterance over its valid frames.

    ``torch.nn.functional.instance_norm`` over (B, D, T) would count the padding;
    this uses the first ``lengths[b]`` frames only (padded frames come out as 0).

    Args:
        hidden: (B, T, D).
        lengths: (B,) valid frames.
    """
    valid = (
        torch.arange(hidden.shape[1], device=hidden.device)[None, :] < lengths[:, None]
    ).unsqueeze(-1)
    count = valid.sum(dim=1, keepdim=True).clamp(min=1).to(hidden.dtype)
    mean = (hidden * valid).sum(dim=1, keepdim=True) / count
    var = (((hidden - mean) * valid) ** 2).sum(dim=1, keepdim=True) / count
    return ((hidden - mean) / torch.sqrt(var + eps)) * valid


class EMARegressionLoss(AbsSSLLoss):
    """Regress the EMA teacher's averaged top-k layers at masked frames.

    Args:
        encoder_output_size: Dimension of the student (and teacher) frames (task).
        top_k: Teacher blocks averaged from the top (MT4SSL, data2vec: 8).
        instance_norm: Instance-normalise each teacher layer before averaging.
        target: Which output of each teacher block: ``ffn`` (MT4SSL, data2vec: its
            final feed-forward module's output before the residual connection) or
            ``block`` (the block output, the project's earlier target).
        loss_scale: ``sqrt_dim`` (MT4SSL, data2vec: squared error summed over the D
            dimensions, times 1/sqrt(D), per masked frame) or ``per_dim`` (mean over
            the dimensions, sqrt(D) times lighter: the project's earlier scale).
        layer: Student layer feeding the regression head (-1: final, normalised).
        weight: Factor on this loss in the sum of the losses.
        masking: The masking util it asks for, as :class:`KMeansCELoss`'s.
    """

    @typechecked
    def __init__(
        self,
        encoder_output_size: int,
        top_k: int = 8,
        instance_norm: bool = True,
        target: str = "ffn",
        loss_scale: str = "sqrt_dim",
        layer: int = -1,
        weight: float = 1.0,
        masking: str = "learned_mask",
    ):
        super().__init__()
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        self.target = _check_choice("target", target, TARGETS)
        self.loss_scale = _check_choice("loss_scale", loss_scale, LOSS_SCALES)
        self.masking = _check_choice("masking", masking, MASKINGS)
        self.util_attributes = {masking, "ema"}
        # The teacher's per-block list it reads (the model keeps only those).
        self.teacher_outputs = ("ffn",) if target == "ffn" else ("layers",)
        self.required_inputs = [
            "encoder_output",
            "encoder_output_lengths",
            "mask_info",
            "teacher_output",
        ]
        self.top_k = top_k
        self.instance_norm = instance_norm
        self.layer = layer
        self.weight = weight
        self.head = torch.nn.Linear(encoder_output_size, encoder_output_size)

    def teacher_layers(self, teacher_output: Dict) -> List[torch.Tensor]:
        """The teacher's per-block tensors this loss averages (``target``)."""
        if self.target == "block":
            return teacher_output["layers"]
        ffn = teacher_output.get("ffn")
        if ffn is None:
            raise RuntimeError(
                "ema_regression: target 'ffn' needs a 'feed_forward' module in every "
                "teacher block (ESPnet's Transformer/Conformer blocks have one); use "
                "target: block for this encoder"
            )
        return ffn

    @torch.no_grad()
    def targets(self, layers: List[torch.Tensor], lengths: torch.Tensor) -> torch.Tensor:
        """(B, T, D) average of the top ``top_k`` layers (each instance-normalised)."""
        if len(layers) < self.top_k:
            raise ValueError(
                f"ema_regression: top_k={self.top_k} but the teacher has {len(layers)} blocks"
            )
        top = [layer.float() for layer in layers[-self.top_k :]]
        if self.instance_norm:
            top = [masked_instance_norm(layer, lengths) for layer in top]
        return torch.stack(top).mean(dim=0)

    def forward(
        self,
        encoder_output: List[torch.Tensor],
        encoder_output_lengths: torch.Tensor,
        mask_info: Dict[str, torch.Tensor],
        teacher_output: Dict,
    ) -> Tuple[torch.Tensor, Dict]:
        hidden = encoder_output[self.layer]
        _check_frames("ema_regression", hidden, mask_info)
        if not torch.equal(teacher_output["lengths"], encoder_output_lengths):
            raise RuntimeError(
                "ema_regression: teacher and student output lengths differ: "
                f"{teacher_output['lengths'].tolist()} vs {encoder_output_lengths.tolist()}"
            )
        target = self.targets(self.teacher_layers(teacher_output), teacher_output["lengths"])
        mask_m = mask_info["mask_m"]
        predicted = self.head(hidden[mask_m]).float()
        selected = target[mask_m]
        if predicted.shape[0] == 0:
            # No masked frame: a zero loss that still reaches the head (DDP).
            loss = predicted.sum() * 0.0 + sum(p.sum() for p in self.head.parameters()) * 0.0
            target_var = hidden.new_zeros(())
        else:
            squared = (predicted - selected) ** 2
            if self.loss_scale == "sqrt_dim":
                # Per masked frame: sum over dimensions / sqrt(D); mean over frames.
                loss = squared.sum(dim=-1).mean() / math.sqrt(squared.shape[-1])
            else:
                loss = squared.mean()
            target_var = selected.var(dim=0, unbiased=False).mean()
        stats = {
            "ema_regression_loss": loss.detach(),
            # A collapsing teacher shows up as the target variance falling to 0.
            "ema_regression_target_var": target_var.detach(),
            "ema_regression_decay": torch.tensor(float(teacher_output["decay"])),
        }
        return self.weight * loss, stats
