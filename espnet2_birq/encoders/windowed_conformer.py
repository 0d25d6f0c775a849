"""Conformer encoder with windowed (local) self-attention.

ESPnet's :class:`~espnet2.asr.encoder.conformer_encoder.ConformerEncoder` attends over
the whole utterance. ESPnet's own local-attention encoder (``longformer``, ASR task
only) needs the external ``longformer`` package, has its own attention parameters and
absolute positions only, so it can neither load a Conformer checkpoint nor be built
by the SSL task. This module adds the window to ESPnet's Conformer itself:

- :func:`apply_attention_window` installs, on every block's ``self_attn``, a forward
  pre-hook (:class:`BandMask`) that intersects the attention mask the block passes in
  (``(B, 1, T)`` padding mask, or ``(B, T1, T2)``) with the band
  ``|i - j| <= attention_window``. The band is applied inside the attention module,
  so every caller of a block sees it: the encoder's ``forward`` as well as
  :func:`espnet2_birq.ssl_model.run_encoder_prefix` (BiRQ's label pass), which calls
  the blocks directly. No parameter is added or renamed: the state dict is that of
  ``ConformerEncoder`` (``--init_param`` works both ways);
- :class:`WindowedConformerEncoder` (choice ``windowed_conformer``) is
  ``ConformerEncoder`` plus one argument, ``attention_window``.

``attention_window`` is the half-width, counted in encoder frames (after the input
layer's subsampling: 40 ms with ``conv2d``): query frame i attends to key frames j
with ``|i - j| <= attention_window``, i.e. ``2 * attention_window + 1`` frames. The
BiRQ paper's "attention window 200" (its AMI/YODAS encoder) is read as this
half-width (``attention_window: 200``, +-8 s); the other reading, a band of total
width 200, is ``attention_window: 100``.

The window is a mask on the full score matrix: compute and memory are those of full
attention. Attention layers that can bypass an explicit ``(B, T1, T2)`` mask have
those paths switched off when the window is installed: flash attention (it keeps only
the last mask row as a key-padding mask) and PyTorch SDPA (a query row whose window
holds only padding would give NaN there, where ESPnet's own softmax gives zeros).
Both only exist for ``selfattention_layer_type: selfattn``; ESPnet's relative-position
attention (the Conformer default) has neither.
"""

import inspect
from typing import Optional

import torch
from typeguard import typechecked

from espnet2.asr.encoder.conformer_encoder import ConformerEncoder

#: ``attention_window`` when a config does not set it (the BiRQ paper's C3 value,
#: read as the half-width; see the module docstring).
DEFAULT_ATTENTION_WINDOW = 200


def band_mask(
    num_queries: int, num_keys: int, window: int, device: Optional[torch.device] = None
) -> torch.Tensor:
    """``(num_queries, num_keys)`` bool, True where ``|i - j| <= window``.

    With fewer queries than keys (ESPnet's incremental ``cache`` path passes only the
    newest frames as queries) the queries are the *last* ``num_queries`` positions.
    """
    offset = num_keys - num_queries
    queries = torch.arange(num_queries, device=device) + offset
    keys = torch.arange(num_keys, device=device)
    return (queries[:, None] - keys[None, :]).abs() <= window


class BandMask:
    """Forward pre-hook of an ESPnet attention module restricting it to a window.

    ESPnet's attention modules take ``(query, key, value[, pos_emb], mask)``; the hook
    replaces ``mask`` (``(B, 1, T2)``, ``(B, T1, T2)`` or None) by its intersection
    with :func:`band_mask`, a ``(B, T1, T2)`` bool mask.
    """

    def __init__(self, window: int, mask_position: int):
        self.window = window
        self.mask_position = mask_position

    def restrict(
        self, mask: Optional[torch.Tensor], query: torch.Tensor, key: torch.Tensor
    ) -> torch.Tensor:
        band = band_mask(query.size(1), key.size(1), self.window, device=query.device)
        if mask is None:
            return band.unsqueeze(0)
        return mask.bool() & band.unsqueeze(0)

    def __call__(self, module: torch.nn.Module, args: tuple, kwargs: dict):
        query = kwargs["query"] if "query" in kwargs else args[0]
        key = kwargs["key"] if "key" in kwargs else args[1]
        if "mask" in kwargs:
            kwargs = dict(kwargs, mask=self.restrict(kwargs["mask"], query, key))
        elif len(args) > self.mask_position:
            args = list(args)
            args[self.mask_position] = self.restrict(args[self.mask_position], query, key)
            args = tuple(args)
        else:
            raise TypeError(
                f"{type(module).__name__} was called without a mask argument; "
                "the attention window needs one (None is allowed)"
            )
        return args, kwargs


@typechecked
def apply_attention_window(encoder: torch.nn.Module, window: int) -> torch.nn.Module:
    """Restrict the self-attention of every block of ``encoder`` to ``|i - j| <= window``.

    Works on any encoder built like ESPnet's Conformer/Transformer (a block list
    ``encoders`` whose blocks have a ``self_attn`` module taking a ``mask``). Applied
    in place; calling it again changes the window. Parameters and state dict are
    untouched. Returns ``encoder``.
    """
    if window < 0:
        raise ValueError(f"attention_window must be >= 0, got {window}")
    blocks = getattr(encoder, "encoders", None)
    if blocks is None:
        raise TypeError(f"{type(encoder).__name__} has no 'encoders' block list")
    for index, block in enumerate(blocks):
        attention = getattr(block, "self_attn", None)
        if attention is None:
            raise TypeError(f"block {index} ({type(block).__name__}) has no self_attn")
        existing = getattr(attention, "band_mask", None)
        if isinstance(existing, BandMask):
            existing.window = window
            continue
        parameters = list(inspect.signature(attention.forward).parameters)
        if "mask" not in parameters:
            raise TypeError(
                f"{type(attention).__name__}.forward has no 'mask' argument: "
                "cannot apply an attention window"
            )
        hook = BandMask(window, parameters.index("mask"))
        # Paths that would ignore or mishandle a (B, T1, T2) mask (module docstring).
        if getattr(attention, "use_flash_attn", False):
            attention.use_flash_attn = False
        if getattr(attention, "use_sdpa", False):
            attention.use_sdpa = False
        # a plain attribute too: a deep copy keeps hook and attribute one object
        attention.band_mask = hook
        attention.register_forward_pre_hook(hook, with_kwargs=True)
    encoder.attention_window = window
    return encoder


def attention_window_of(encoder: torch.nn.Module) -> Optional[int]:
    """The window :func:`apply_attention_window` installed, None for full attention."""
    return getattr(encoder, "attention_window", None)


class WindowedConformerEncoder(ConformerEncoder):
    """ESPnet's Conformer encoder with self-attention limited to a window.

    Args:
        input_size: Input dimension.
        attention_window: Half-width of the window in encoder frames: frame i attends
            to frames j with ``|i - j| <= attention_window`` (module docstring).
        **conformer_kwargs: Every other argument of ESPnet's ``ConformerEncoder``
            (``--print_config`` lists them).
    """

    @typechecked
    def __init__(
        self,
        input_size: int,
        attention_window: int = DEFAULT_ATTENTION_WINDOW,
        **conformer_kwargs,
    ):
        super().__init__(input_size, **conformer_kwargs)
        apply_attention_window(self, attention_window)

    def extra_repr(self) -> str:
        return f"attention_window={self.attention_window}"


def _signature() -> inspect.Signature:
    """``ConformerEncoder``'s signature with ``attention_window`` after ``input_size``.

    ESPnet's ``--print_config`` reads an encoder's arguments from its signature; the
    constructor above forwards ``**conformer_kwargs``, so it is given the full list
    (which follows the installed ESPnet version).
    """
    base = list(inspect.signature(ConformerEncoder.__init__).parameters.values())
    window = inspect.Parameter(
        "attention_window",
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
        default=DEFAULT_ATTENTION_WINDOW,
        annotation=int,
    )
    return inspect.Signature(base[:2] + [window] + base[2:])


WindowedConformerEncoder.__init__.__signature__ = _signature()
