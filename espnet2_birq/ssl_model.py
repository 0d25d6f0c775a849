"""ESPnet SSL model for BEST-RQ-style objectives (BEST-RQ, BiRQ).

It extends :class:`espnet2.ssl.espnet_model.ESPnetSSLModel` (whose ``forward`` runs the
losses, counts ``global_step`` and steps schedules) and replaces ``encode``:

1. features: in-model frontend on raw waveforms, or precomputed features;
2. normalisation (global or per-utterance CMVN), shared with fine-tuning;
3. the *unmasked* normalised features are handed to the losses (targets);
4. span masking before the subsampling, aligned with the encoder output frames;
5. the full encoder on the masked features (all layer outputs kept);
6. only for losses that label themselves from layer k (BiRQ): the first k blocks of
   the same encoder on the unmasked features, without a graph when the loss asks
   for stop-gradient labels.
"""

import inspect
from typing import Dict, List, Optional, Tuple

import torch

from espnet2.ssl.espnet_model import ESPnetSSLModel
from espnet2_birq.masking import FrameSubsampling
from espnet.nets.pytorch_backend.nets_utils import make_pad_mask


def run_encoder_prefix(
    encoder: torch.nn.Module,
    feats: torch.Tensor,
    lengths: torch.Tensor,
    num_blocks: int,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Run the input layer and the first ``num_blocks`` blocks of an ESPnet encoder.

    Works for encoders built like ESPnet's Transformer, Conformer and E-Branchformer:
    an ``embed`` input layer followed by a sequence ``encoders`` of blocks taking and
    returning ``(x, mask)`` where ``x`` may be ``(x, pos_emb)``.

    Args:
        encoder: the encoder module (its parameters are shared, nothing is copied).
        feats: (B, L, D) encoder input.
        lengths: (B,) valid frames.
        num_blocks: blocks to run after the input layer (0: input layer only).

    Returns:
        hidden: (B, T_out, D') output of block ``num_blocks``.
        hidden_lengths: (B,) valid output frames.
    """
    blocks = getattr(encoder, "encoders", None)
    embed = getattr(encoder, "embed", None)
    if blocks is None:
        raise TypeError(
            f"{type(encoder).__name__} has no 'encoders' block list; self-labelling "
            "from an intermediate layer needs a Transformer/Conformer/E-Branchformer"
        )
    if not 0 <= num_blocks <= len(blocks):
        raise ValueError(f"label layer {num_blocks} outside 0..{len(blocks)}")
    masks = (~make_pad_mask(lengths, maxlen=feats.shape[1])[:, None, :]).to(
        feats.device
    )
    x = feats
    if embed is not None:
        # Subsampling layers take the mask and shorten it; linear layers do not.
        if len(inspect.signature(embed.forward).parameters) >= 2:
            x, masks = embed(x, masks)
        else:
            x = embed(x)
    for block in list(blocks)[:num_blocks]:
        x, masks = block(x, masks)
    if isinstance(x, tuple):
        x = x[0]
    return x, masks.squeeze(1).sum(dim=1)


class BirqSSLModel(ESPnetSSLModel):
    """Encoder-only SSL model with input-level targets (BEST-RQ, BiRQ).

    Constructor arguments are those of ``ESPnetSSLModel``; the task builds it.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.specaug is not None:
            raise ValueError(
                "specaug is not supported for BEST-RQ/BiRQ pre-training: span masking "
                "is the augmentation, and targets must come from the clean input"
            )
        self.subsampling = FrameSubsampling.from_encoder(self.encoder)

    def collect_feats(
        self,
        speech: torch.Tensor,
        speech_lengths: torch.Tensor,
        text: Optional[torch.Tensor] = None,
        text_lengths: Optional[torch.Tensor] = None,
        **kwargs,
    ) -> Dict[str, torch.Tensor]:
        feats, feats_lengths = self._extract_feats(speech, speech_lengths)
        return {"feats": feats, "feats_lengths": feats_lengths}

    def label_layers(self) -> Dict[int, bool]:
        """Layers some loss labels itself from -> whether any of them needs gradient."""
        layers: Dict[int, bool] = {}
        for loss in self.losses:
            layer = getattr(loss, "label_layer", None)
            if layer is not None:
                if hasattr(loss, "labels_need_grad"):
                    needs_grad = loss.labels_need_grad()
                else:
                    needs_grad = not getattr(loss, "stop_gradient_labels", False)
                layers[layer] = layers.get(layer, False) or needs_grad
        return layers

    def encode(
        self,
        speech: torch.Tensor,
        speech_lengths: torch.Tensor,
        text: Optional[torch.Tensor] = None,
        text_lengths: Optional[torch.Tensor] = None,
        use_final_output: bool = True,
    ) -> Dict:
        """Features, masking and encoder passes; returns the losses' inputs.

        Returns a dict with ``features`` (B, L, D) and ``feature_lengths``, the
        normalised unmasked encoder input; ``mask_info``; ``encoder_output`` (list of
        (B, T_out, D') per layer, the last one after the final norm) and
        ``encoder_output_lengths``; and ``label_hidden`` {layer: ((B, T_out, D'),
        lengths)} for self-labelling losses.
        """
        feats, feats_lengths = self._extract_feats(speech, speech_lengths)
        if self.normalize is not None:
            if self.frontend is None:
                # ESPnet's utterance/global MVN normalise in place; without a
                # frontend ``feats`` is a view of the caller's batch, left untouched.
                feats = feats.clone()
            feats, feats_lengths = self.normalize(feats, feats_lengths)
        data = {"features": feats, "feature_lengths": feats_lengths}

        if "span_mask" in self.util_modules:
            encoder_input, mask_info = self.util_modules["span_mask"](
                feats, feats_lengths, self.subsampling
            )
            data["mask_info"] = mask_info
        else:
            encoder_input = feats
        clean_input = feats
        if self.preencoder is not None:
            encoder_input, _ = self.preencoder(encoder_input, feats_lengths)
            clean_input, _ = self.preencoder(clean_input, feats_lengths)

        hidden, hidden_lengths, _ = self.encoder(
            encoder_input, feats_lengths, return_all_hs=True
        )
        final, per_layer = hidden
        layers: List[torch.Tensor] = list(per_layer)
        if use_final_output:
            layers = layers[:-1] + [final]
        data["encoder_output"] = layers
        data["encoder_output_lengths"] = hidden_lengths
        if "mask_info" in data and not torch.equal(
            data["mask_info"]["output_lengths"], hidden_lengths
        ):
            raise RuntimeError(
                "mask lengths differ from encoder output lengths: "
                f"{data['mask_info']['output_lengths'].tolist()} vs "
                f"{hidden_lengths.tolist()}"
            )

        label_hidden = {}
        for layer, needs_grad in self.label_layers().items():
            with torch.set_grad_enabled(needs_grad and torch.is_grad_enabled()):
                label_hidden[layer] = run_encoder_prefix(
                    self.encoder, clean_input, feats_lengths, layer
                )
        data["label_hidden"] = label_hidden
        return data
