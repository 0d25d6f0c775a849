"""ESPnet SSL model for masked-prediction objectives (BEST-RQ, BiRQ and their relatives).

It extends :class:`espnet2.ssl.espnet_model.ESPnetSSLModel` and replaces ``forward``
and ``encode``:

1. features: in-model frontend on raw waveforms, or precomputed features;
2. normalisation (global or per-utterance CMVN), shared with fine-tuning;
3. the *unmasked* normalised features are handed to the losses (targets);
4. masking, aligned with the encoder output frames: BEST-RQ's noise spans on the
   features before the subsampling (util ``span_mask``), or a learned embedding in
   place of the masked subsampled frames (util ``learned_mask``, MT4SSL);
5. the full encoder on the masked input (all layer outputs kept);
6. whatever else the losses ask for, by name, in their ``required_inputs``
   (:data:`LOSS_INPUTS` lists what the model provides).

A new objective is added by writing a loss module (``AbsSSLLoss`` with
``required_inputs`` drawn from :data:`LOSS_INPUTS`) and registering it in the task.
Losses that need the unmasked pass through the first k blocks (self-labelling) ask for
``label_hidden`` and describe the pass with a ``label_pass()`` method returning
:class:`espnet2_birq.losses.birq.LabelPass` (layer, graph or not, dropout or not).
Modules with an ``on_optimizer_step()`` method (schedules, EMA teachers) are called
after every optimiser update (:func:`espnet2_birq.bilevel.register_update_hooks`).
"""

import contextlib
import inspect
from typing import Dict, Iterator, List, Optional, Tuple

import torch

from espnet2.ssl.espnet_model import ESPnetSSLModel
from espnet2.torch_utils.device_funcs import force_gatherable
from espnet2_birq.masking import FrameSubsampling, positional_encoding_of
from espnet2_birq.rng import step_generator
from espnet.nets.pytorch_backend.nets_utils import make_pad_mask

#: Inputs the model computes for its losses, by the names losses use in
#: ``required_inputs``.
LOSS_INPUTS = {
    "features": "(B, L, D) normalised, unmasked encoder input",
    "feature_lengths": "(B,) valid input frames",
    "mask_info": "masking output (espnet2_birq.masking.SpanMasking or LearnedMasking)",
    "encoder_output": "list of (B, T_out, D') outputs of every block on the masked "
    "input (the last one after the final norm)",
    "encoder_output_lengths": "(B,) valid output frames",
    "label_hidden": "{k: ((B, T_out, D'), lengths)}: first k blocks on the unmasked "
    "input, for each loss' label_pass()",
    "rng": "torch.Generator of this step and data-parallel rank (espnet2_birq.rng)",
    "text": "(B, U) the batch's 'text' stream, if the data loader has one",
    "text_lengths": "(B,) its lengths",
    # MT4SSL (espnet2_birq.losses.mt4ssl): offline labels and the EMA teacher.
    "frame_labels": "(B, T_lab) int offline labels, one per encoder frame (e.g. k-means "
    "cluster ids), the data loader's 'frame_labels' stream (None without one)",
    "frame_labels_lengths": "(B,) its lengths",
    "teacher_output": "{'layers': list of (B, T_out, D') outputs of every block of the "
    "EMA teacher (util 'ema', espnet2_birq.ema) on the unmasked input, in evaluation "
    "mode without gradient; 'ffn': the same for each block's final feed-forward module "
    "before its residual connection (None if a block has none); either is None when no "
    "loss names it in its 'teacher_outputs' (default: both); 'lengths': (B,); "
    "'decay': the teacher's current decay}",
}


def apply_input_layer(
    embed: torch.nn.Module, x: torch.Tensor, masks: torch.Tensor
) -> Tuple[object, torch.Tensor]:
    """An ESPnet encoder's input layer on ``x`` with its (B, 1, L) padding mask.

    Subsampling layers take the mask and shorten it; linear layers do not.
    """
    if len(inspect.signature(embed.forward).parameters) >= 2:
        return embed(x, masks)
    return embed(x), masks


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
        x, masks = apply_input_layer(embed, x, masks)
    for block in list(blocks)[:num_blocks]:
        x, masks = block(x, masks)
    if isinstance(x, tuple):
        x = x[0]
    return x, masks.squeeze(1).sum(dim=1)


@contextlib.contextmanager
def evaluation_mode(module: torch.nn.Module) -> Iterator[None]:
    """Run ``module`` in evaluation mode (no dropout, frozen batch-norm statistics).

    Gradients are unaffected: the graph is built as usual. Each submodule's own
    ``training`` flag is restored afterwards.
    """
    flags = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, training in flags:
            m.training = training


class BirqSSLModel(ESPnetSSLModel):
    """Encoder-only SSL model with input-level targets (BEST-RQ, BiRQ, ...).

    Constructor arguments are those of ``ESPnetSSLModel``; the task builds it.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.specaug is not None:
            raise ValueError(
                "specaug is not supported for BEST-RQ/BiRQ pre-training: span masking "
                "is the augmentation, and targets must come from the clean input"
            )
        unknown = set(self.required_inputs) - set(LOSS_INPUTS)
        if unknown:
            raise ValueError(
                f"losses ask for inputs the model does not provide: {sorted(unknown)}; "
                f"known: {sorted(LOSS_INPUTS)}"
            )
        self.subsampling = FrameSubsampling.from_encoder(self.encoder)
        if {"span_mask", "learned_mask"} <= set(self.util_modules):
            raise ValueError(
                "the losses ask for two maskings, span_mask and learned_mask: one masked "
                "forward serves every loss; give the MT4SSL losses (kmeans_ce, "
                "ema_regression) 'masking: span_mask' to combine them with best_rq/birq"
            )
        if "learned_mask" in self.util_modules:
            positional_encoding_of(self.encoder)  # refuses encoders it cannot mask

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

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        speech: torch.Tensor,
        speech_lengths: torch.Tensor,
        text: Optional[torch.Tensor] = None,
        text_lengths: Optional[torch.Tensor] = None,
        **kwargs,
    ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor], torch.Tensor]:
        """Sum of the losses, their statistics and the batch weight (ESPnet trainer API).

        Schedules are not stepped here: they count optimiser updates through
        ``on_optimizer_step`` (ESPnet's ``global_step`` counts forward passes, which
        runs ahead of the updates with gradient accumulation). A batch whose loss is
        not finite leaves every floating-point buffer as it found it (batch-norm
        running statistics, loss state), so the update the trainer then skips leaves
        no trace either. The saved values are put back by a selection on the device
        (no host synchronisation per forward); the trainer reads finiteness where it
        already waits for the device (the gradient norm).
        """
        if speech.shape[0] != speech_lengths.shape[0]:
            raise ValueError(
                f"batch of {speech.shape[0]} inputs with {speech_lengths.shape[0]} lengths"
            )
        snapshot = self._buffer_snapshot() if self.training else None
        data = self.encode(speech, speech_lengths, text, text_lengths)
        data["text"] = text
        data["text_lengths"] = text_lengths
        data["frame_labels"] = kwargs.get("frame_labels")
        data["frame_labels_lengths"] = kwargs.get("frame_labels_lengths")

        total_loss = 0.0
        stats: Dict[str, torch.Tensor] = {}
        for loss_func in self.losses:
            loss, loss_stats = loss_func(
                **{k: data[k] for k in loss_func.required_inputs}
            )
            total_loss = total_loss + loss
            clash = set(loss_stats) & set(stats)
            if clash:
                raise RuntimeError(
                    f"two losses log the same statistics {sorted(clash)}; give each "
                    "loss its own prefix"
                )
            stats.update(loss_stats)
        if snapshot is not None:
            self._restore_buffers(snapshot, keep=torch.isfinite(total_loss.detach()).all())
        stats["loss"] = total_loss.detach()
        total_loss, stats, weight = force_gatherable(
            (total_loss, stats, speech.shape[0]), total_loss.device
        )
        if self.training:
            self.global_step = self.global_step + 1
        return total_loss, stats, weight

    def _buffer_snapshot(self) -> List[Tuple[torch.Tensor, torch.Tensor]]:
        """Copies of the buffers a forward pass may change (not the frozen quantisers,
        nor an EMA teacher's weights): batch-norm statistics and the bilevel state,
        a few small tensors. Where they live is found once (walking the module tree
        at every forward costs more than the copies)."""
        owners = getattr(self, "_snapshot_owners", None)
        if owners is None:
            owners = self._snapshot_owners = [
                (module._buffers, name)
                for prefix, module in self.named_modules()
                for name, buffer in module._buffers.items()
                if buffer is not None
                and (
                    name.startswith("running_")
                    or name == "num_batches_tracked"
                    or ".bilevel." in f".{prefix}."
                )
            ]
        return [(owner[name], owner[name].detach().clone()) for owner, name in owners]

    @staticmethod
    @torch.no_grad()
    def _restore_buffers(
        snapshot: List[Tuple[torch.Tensor, torch.Tensor]],
        keep: Optional[torch.Tensor] = None,
    ) -> None:
        """Put the saved values back; with ``keep`` (a boolean scalar tensor) only
        where it is false, selected on the device without reading it.

        Written through ``.data``: batch normalisation saves its running statistics
        for the backward pass (which reads only the batch statistics in training),
        and a version-counted write would make that backward fail.
        """
        for buffer, saved in snapshot:
            if keep is None:
                buffer.data.copy_(saved)
            else:
                torch.where(keep, buffer, saved, out=buffer.data)

    # ------------------------------------------------------------------- encode
    def label_passes(self) -> Dict[int, Tuple[bool, bool]]:
        """Unmasked passes the losses ask for: {layer: (needs_grad, dropout)}."""
        passes: Dict[int, Tuple[bool, bool]] = {}
        for loss in self.losses:
            if "label_hidden" not in loss.required_inputs:
                continue
            request = loss.label_pass()
            needs_grad, dropout = passes.get(request.layer, (False, False))
            passes[request.layer] = (
                needs_grad or request.needs_grad,
                dropout or request.dropout,
            )
        return passes

    def encode(
        self,
        speech: torch.Tensor,
        speech_lengths: torch.Tensor,
        text: Optional[torch.Tensor] = None,
        text_lengths: Optional[torch.Tensor] = None,
        use_final_output: bool = True,
    ) -> Dict:
        """Features, masking and encoder passes; returns the losses' inputs.

        Returns a dict with the entries of :data:`LOSS_INPUTS` the losses need (the
        features, masking and masked forward are always computed).
        """
        feats, feats_lengths = self._extract_feats(speech, speech_lengths)
        if self.normalize is not None:
            if self.frontend is None:
                # ESPnet's utterance/global MVN normalise in place; without a
                # frontend ``feats`` is a view of the caller's batch, left untouched.
                feats = feats.clone()
            feats, feats_lengths = self.normalize(feats, feats_lengths)
        # One random stream per step and data-parallel rank: masks and label noise
        # differ between ranks (ESPnet seeds all ranks alike).
        rng = step_generator(feats.device) if self.training else None
        data = {"features": feats, "feature_lengths": feats_lengths, "rng": rng}

        masked_forward = contextlib.nullcontext()
        if "span_mask" in self.util_modules:
            encoder_input, mask_info = self.util_modules["span_mask"](
                feats, feats_lengths, self.subsampling, generator=rng
            )
            data["mask_info"] = mask_info
        elif "learned_mask" in self.util_modules:
            # The features stay as they are; the masked subsampled frames are replaced
            # inside the encoder's forward (espnet2_birq.masking.LearnedMasking).
            masker = self.util_modules["learned_mask"]
            encoder_input = feats
            data["mask_info"] = masker.draw(
                feats_lengths.to(feats.device), feats.shape[1], self.subsampling, rng
            )
            masked_forward = masker.applied(self.encoder, data["mask_info"]["mask_m"])
        else:
            encoder_input = feats
        clean_input = feats
        if self.preencoder is not None:
            encoder_input, _ = self.preencoder(encoder_input, feats_lengths)
            clean_input, _ = self.preencoder(clean_input, feats_lengths)

        with masked_forward:
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
        for layer, (needs_grad, dropout) in self.label_passes().items():
            mode = contextlib.nullcontext() if dropout else evaluation_mode(self.encoder)
            with mode, torch.set_grad_enabled(needs_grad and torch.is_grad_enabled()):
                label_hidden[layer] = run_encoder_prefix(
                    self.encoder, clean_input, feats_lengths, layer
                )
        data["label_hidden"] = label_hidden

        if "teacher_output" in self.required_inputs:
            if "ema" not in self.util_modules:
                raise RuntimeError("a loss asks for teacher_output but there is no 'ema' util")
            teacher = self.util_modules["ema"]
            # Only the per-block lists some loss reads (``teacher_outputs``; both by
            # default) are held.
            keep = set()
            for loss in self.losses:
                if "teacher_output" in loss.required_inputs:
                    keep.update(getattr(loss, "teacher_outputs", ("layers", "ffn")))
            out = teacher.encode(clean_input, feats_lengths, keep=tuple(sorted(keep)))
            data["teacher_output"] = {
                "layers": out["layers"],
                "ffn": out["ffn"],
                "lengths": out["lengths"],
                "decay": teacher.get_decay(),
            }
        return data
