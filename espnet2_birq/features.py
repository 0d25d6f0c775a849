"""The single definition of the acoustic features used by espnet2-birq.

Every place in the project that needs features (offline extraction with
``espnet2_birq.bin.extract_fbank``, k-means features and on-the-fly
extraction inside a model through :class:`KaldiFbankFrontend`, which ESPnet's
collect_stats also uses for the CMVN statistics of raw audio) calls :func:`kaldi_fbank`, so the
precomputed path and the raw-waveform path produce identical numbers.

Feature definition (Kaldi ``compute-fbank-feats`` compatible):

* 80 log-mel filterbank energies, 25 ms Povey window, 10 ms hop, 16 kHz input,
  pre-emphasis 0.97, DC offset removal, power spectrum, ``low_freq=20``,
  ``high_freq=0`` (Nyquist), no energy term, ``snip_edges=True`` (Kaldi
  default: only frames lying completely inside the signal are kept).
* ``dither=0`` by default, so the features are a deterministic function of
  the audio (Kaldi's default dither of 1.0 adds random noise).
* Waveform scaling: the waveform is expected as floats in ``[-1, 1]`` (what
  ``soundfile`` and ESPnet's ``sound`` loader return) and is multiplied by
  ``32768`` before the filterbank, i.e. it is brought to the int16 range Kaldi
  works in.  The log-mel values therefore match Kaldi's
  ``compute-fbank-feats --dither=0 --num-mel-bins=80`` on the same 16-bit wav
  (up to float rounding).  Multiplying by a power of two is exact in floating
  point, so int16 audio read as float round-trips exactly.
"""

from typing import Optional, Tuple

import torch
import torchaudio.compliance.kaldi as ta_kaldi
from typeguard import typechecked

from espnet2.asr.frontend.abs_frontend import AbsFrontend

#: Factor applied to ``[-1, 1]`` float audio to reach Kaldi's int16 range.
INT16_SCALE = 32768.0


def window_params(
    sample_rate: int, frame_length_ms: float = 25.0, frame_shift_ms: float = 10.0
) -> Tuple[int, int]:
    """Window size and shift in samples, computed exactly as torchaudio/Kaldi do.

    Args:
        sample_rate (int): Sampling rate in Hz.
        frame_length_ms (float): Window length in milliseconds.
        frame_shift_ms (float): Hop length in milliseconds.

    Returns:
        (int, int): ``(window_size, window_shift)`` in samples
        (400 and 160 for the defaults at 16 kHz).
    """
    window_size = int(sample_rate * frame_length_ms * 0.001)
    window_shift = int(sample_rate * frame_shift_ms * 0.001)
    return window_size, window_shift


def num_frames(
    num_samples: int,
    sample_rate: int = 16000,
    frame_length_ms: float = 25.0,
    frame_shift_ms: float = 10.0,
) -> int:
    """Number of frames :func:`kaldi_fbank` returns for ``num_samples`` samples.

    With ``snip_edges=True`` (Kaldi's default, used here) only complete windows
    are kept: ``0`` if ``num_samples < window_size`` else
    ``1 + (num_samples - window_size) // window_shift``.  For 16 kHz, 25 ms /
    10 ms that is ``1 + (num_samples - 400) // 160``.

    Args:
        num_samples (int): Length of the waveform in samples.
        sample_rate (int): Sampling rate in Hz.
        frame_length_ms (float): Window length in milliseconds.
        frame_shift_ms (float): Hop length in milliseconds.

    Returns:
        int: Number of feature frames.
    """
    window_size, window_shift = window_params(
        sample_rate, frame_length_ms, frame_shift_ms
    )
    if num_samples < window_size:
        return 0
    return 1 + (num_samples - window_size) // window_shift


def kaldi_fbank(
    waveform: torch.Tensor,
    sample_rate: int,
    num_mel_bins: int = 80,
    frame_length_ms: float = 25.0,
    frame_shift_ms: float = 10.0,
    dither: float = 0.0,
    expected_sample_rate: Optional[int] = 16000,
    waveform_scale: float = INT16_SCALE,
) -> torch.Tensor:
    """Kaldi-compatible log-mel filterbank features of one utterance.

    Args:
        waveform (Tensor): Mono waveform with shape `(T,)`, float values in
            ``[-1, 1]``.
        sample_rate (int): Sampling rate of ``waveform`` in Hz.
        num_mel_bins (int): Number of mel bins ``D`` (default 80).
        frame_length_ms (float): Window length in milliseconds (default 25).
        frame_shift_ms (float): Hop length in milliseconds (default 10).
        dither (float): Dithering constant in the int16 domain; ``0`` (default)
            makes the features deterministic.
        expected_sample_rate (int or None): If not ``None``, a
            ``ValueError`` is raised when ``sample_rate`` differs from it
            (default 16000).  Resampling is never done implicitly.
        waveform_scale (float): Factor applied to the waveform before the
            filterbank (default 32768, Kaldi's int16 range).

    Returns:
        Tensor: Log-mel features with shape `(L, D)` where
        ``L = num_frames(T, sample_rate, frame_length_ms, frame_shift_ms)``.
        ``L`` may be 0 for waveforms shorter than one window; the result then
        has shape `(0, D)`.  The dtype is ``waveform``'s floating dtype
        (float32 for integer input).
    """
    if waveform.dim() != 1:
        raise ValueError(
            f"kaldi_fbank expects a mono waveform of shape (T,), got shape "
            f"{tuple(waveform.shape)}"
        )
    if expected_sample_rate is not None and sample_rate != expected_sample_rate:
        raise ValueError(
            f"sample rate {sample_rate} Hz does not match the expected "
            f"{expected_sample_rate} Hz (resample the audio first)"
        )
    if not waveform.is_floating_point():
        waveform = waveform.float()
    n = num_frames(waveform.numel(), sample_rate, frame_length_ms, frame_shift_ms)
    if n == 0:
        return waveform.new_zeros((0, num_mel_bins))
    feats = ta_kaldi.fbank(
        (waveform * waveform_scale).unsqueeze(0),
        num_mel_bins=num_mel_bins,
        frame_length=frame_length_ms,
        frame_shift=frame_shift_ms,
        dither=dither,
        energy_floor=0.0,
        sample_frequency=float(sample_rate),
        snip_edges=True,
        window_type="povey",
        use_energy=False,
    )
    assert feats.shape == (n, num_mel_bins), (feats.shape, n)
    return feats


class KaldiFbankFrontend(AbsFrontend):
    """ESPnet frontend computing :func:`kaldi_fbank` on the fly.

    Each utterance of the batch is processed separately with exactly the same
    function the offline extractor uses, so training on raw audio and on
    precomputed ``feats.scp`` gives the same inputs.

    Args:
        fs (int): Expected sampling rate in Hz (default 16000).
        n_mels (int): Number of mel bins (default 80).
        frame_length_ms (float): Window length in milliseconds (default 25).
        frame_shift_ms (float): Hop length in milliseconds (default 10).
        dither (float): Dither constant (default 0: deterministic).  Dither is
            only applied in training mode; in eval mode it is always 0.
        waveform_scale (float): Factor applied to the ``[-1, 1]`` waveform
            (default 32768, Kaldi's int16 range).

    Example (ESPnet config)::

        frontend: espnet2_birq.features.KaldiFbankFrontend  # if registered
        frontend_conf:
            fs: 16000
            n_mels: 80
    """

    @typechecked
    def __init__(
        self,
        fs: int = 16000,
        n_mels: int = 80,
        frame_length_ms: float = 25.0,
        frame_shift_ms: float = 10.0,
        dither: float = 0.0,
        waveform_scale: float = INT16_SCALE,
    ):
        super().__init__()
        if n_mels <= 0:
            raise ValueError(f"n_mels must be positive, got {n_mels}")
        if frame_shift_ms <= 0 or frame_length_ms < frame_shift_ms:
            raise ValueError(
                f"need 0 < frame_shift_ms <= frame_length_ms, got "
                f"{frame_shift_ms} and {frame_length_ms}"
            )
        self.fs = fs
        self.n_mels = n_mels
        self.frame_length_ms = frame_length_ms
        self.frame_shift_ms = frame_shift_ms
        self.dither = dither
        self.waveform_scale = waveform_scale

    def output_size(self) -> int:
        """Feature dimension ``D`` (= ``n_mels``)."""
        return self.n_mels

    def forward(
        self, input: torch.Tensor, input_lengths: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Compute padded fbank features for a batch of waveforms.

        Args:
            input (Tensor): Padded waveforms with shape `(B, T)`, floats in
                ``[-1, 1]``.
            input_lengths (Tensor): Valid lengths in samples with shape `(B,)`.

        Returns:
            (Tensor, Tensor):
                Tensor: Features with shape `(B, L, D)`, zero-padded after each
                utterance's length, where ``L = max(feats_lengths)``.
                Tensor: Number of frames per utterance with shape `(B,)`.
        """
        if input.dim() != 2:
            raise ValueError(
                f"expected input of shape (B, T), got {tuple(input.shape)}"
            )
        if input_lengths.dim() != 1 or input_lengths.numel() != input.size(0):
            raise ValueError(
                f"input_lengths must have shape ({input.size(0)},), got "
                f"{tuple(input_lengths.shape)}"
            )
        dither = self.dither if self.training else 0.0
        feats_list = []
        for b in range(input.size(0)):
            length = int(input_lengths[b])
            feats_list.append(
                kaldi_fbank(
                    input[b, :length],
                    self.fs,
                    num_mel_bins=self.n_mels,
                    frame_length_ms=self.frame_length_ms,
                    frame_shift_ms=self.frame_shift_ms,
                    dither=dither,
                    expected_sample_rate=None,
                    waveform_scale=self.waveform_scale,
                )
            )
        feats_lengths = torch.tensor(
            [f.size(0) for f in feats_list], dtype=torch.long, device=input.device
        )
        max_len = int(feats_lengths.max()) if len(feats_list) > 0 else 0
        dtype = input.dtype if input.is_floating_point() else torch.float32
        feats = input.new_zeros((input.size(0), max_len, self.n_mels), dtype=dtype)
        for b, f in enumerate(feats_list):
            feats[b, : f.size(0)] = f
        return feats, feats_lengths
