"""The single definition of the acoustic features used by espnet2-birq.

Every place in the project that needs features (offline extraction with
``espnet2_birq.bin.extract_fbank``, k-means features and on-the-fly
extraction inside a model through :class:`KaldiFbankFrontend`, which ESPnet's
collect_stats also uses for the CMVN statistics of raw audio) computes this one
definition, so the precomputed path and the raw-waveform path produce the same
numbers. :func:`kaldi_fbank` computes one utterance (torchaudio's Kaldi fbank);
the frontend computes a whole padded batch at once with :func:`kaldi_fbank_batch`,
the same operations in the same order on every frame, with no per-utterance
loop and nothing read back to the host. On the CPU the two agree exactly; the
tests hold them within 1e-5 on batches of mixed lengths (the margin left for
another device's matrix-product and FFT roundings).

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

import functools
from typing import Optional, Tuple

import torch
import torchaudio.compliance.kaldi as ta_kaldi
from typeguard import typechecked

from espnet2.asr.frontend.abs_frontend import AbsFrontend

#: Factor applied to ``[-1, 1]`` float audio to reach Kaldi's int16 range.
INT16_SCALE = 32768.0
#: Kaldi's settings that :func:`kaldi_fbank` fixes (torchaudio's defaults).
PREEMPHASIS = 0.97
LOW_FREQ = 20.0
HIGH_FREQ = 0.0
#: Floor of the mel energies before the log (torchaudio's ``EPSILON``).
LOG_FLOOR = torch.finfo(torch.float).eps
#: On the CPU, :func:`kaldi_fbank_batch` works on this many frames at most at a time.
CPU_CHUNK_FRAMES = 2048


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


@functools.lru_cache(maxsize=16)
def _fbank_constants(
    window_size: int,
    padded_size: int,
    num_mel_bins: int,
    sample_rate: int,
    device: torch.device,
    dtype: torch.dtype,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Povey window ``(W,)`` and mel banks ``(padded // 2 + 1, D)``, as torchaudio builds them.

    Cached per device and dtype: built and copied to the device once, not at every batch.
    """
    window = torch.hann_window(
        window_size, periodic=False, device=device, dtype=dtype
    ).pow(0.85)
    banks, _ = ta_kaldi.get_mel_banks(
        num_mel_bins, padded_size, float(sample_rate), LOW_FREQ, HIGH_FREQ,
        100.0, -500.0, 1.0,
    )  # fmt: skip
    banks = banks.to(device=device, dtype=dtype)
    banks = torch.nn.functional.pad(banks, (0, 1), mode="constant", value=0)
    return window, banks.T.contiguous()


def kaldi_fbank_batch(
    waveforms: torch.Tensor,
    lengths: torch.Tensor,
    sample_rate: int = 16000,
    num_mel_bins: int = 80,
    frame_length_ms: float = 25.0,
    frame_shift_ms: float = 10.0,
    dither: float = 0.0,
    waveform_scale: float = INT16_SCALE,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """:func:`kaldi_fbank` of every utterance of a padded batch, computed at once.

    The operations are those of ``torchaudio.compliance.kaldi.fbank`` with the
    settings of :func:`kaldi_fbank` (``snip_edges``, DC removal, pre-emphasis 0.97,
    Povey window, zero padding to a power of two, power spectrum, mel banks of
    ``get_mel_banks``, log with the float epsilon as floor), applied to the frames of
    the whole ``(B, T)`` tensor (``unfold``), then the frames reaching past each
    utterance's length are set to zero. Nothing is read back to the host, so on an
    accelerator the call queues its kernels and returns.

    Args:
        waveforms (Tensor): Padded waveforms `(B, T)`, floats in ``[-1, 1]``.
        lengths (Tensor): Valid samples `(B,)` (on any device).
        sample_rate (int): Sampling rate in Hz.
        num_mel_bins (int): ``D``.
        frame_length_ms (float): Window length in milliseconds.
        frame_shift_ms (float): Hop length in milliseconds.
        dither (float): Dithering constant in the int16 domain; its noise is drawn
            for the whole batch, so with ``dither > 0`` the values differ from a
            per-utterance call (noise is noise).
        waveform_scale (float): Factor applied to the waveform first.

    Returns:
        (Tensor, Tensor): features `(B, L, D)` with ``L = num_frames(T)``, zero
        after each utterance's frames, and the frames per utterance `(B,)`
        (``num_frames`` of each length). Computed in the waveform's floating dtype
        (float32 for integer input) with autocast off: mixed precision would change
        the numbers (a float16 power spectrum overflows).
    """
    if waveforms.dim() != 2:
        raise ValueError(
            f"expected waveforms of shape (B, T), got {tuple(waveforms.shape)}"
        )
    if not waveforms.is_floating_point():
        waveforms = waveforms.float()
    window_size, window_shift = window_params(
        sample_rate, frame_length_ms, frame_shift_ms
    )
    padded_size = 1 if window_size == 0 else 2 ** (window_size - 1).bit_length()
    batch, total = waveforms.shape
    lengths = lengths.to(device=waveforms.device)
    feats_lengths = torch.where(
        lengths >= window_size,
        torch.div(lengths - window_size, window_shift, rounding_mode="floor") + 1,
        torch.zeros_like(lengths),
    ).long()
    max_frames = num_frames(total, sample_rate, frame_length_ms, frame_shift_ms)
    if max_frames == 0:
        return waveforms.new_zeros((batch, 0, num_mel_bins)), feats_lengths
    window, banks = _fbank_constants(
        window_size, padded_size, num_mel_bins, sample_rate,
        waveforms.device, waveforms.dtype,
    )  # fmt: skip
    # On the CPU a few utterances at a time: a whole batch's temporaries (hundreds of MB)
    # would be fresh memory pages at every call, slower than the arithmetic.
    rows = batch if waveforms.device.type != "cpu" else max(1, CPU_CHUNK_FRAMES // max_frames)
    feats = waveforms.new_empty((batch, max_frames, num_mel_bins))
    with torch.autocast(device_type=waveforms.device.type, enabled=False):
        for start in range(0, batch, rows):
            chunk = waveforms[start : start + rows]
            # (b, L, W): frame l of utterance b is samples [l * shift, l * shift + W)
            frames = (chunk * waveform_scale).unfold(1, window_size, window_shift)
            if dither != 0.0:
                frames = frames + torch.randn_like(frames) * dither
            frames = frames - frames.mean(dim=2, keepdim=True)
            # pre-emphasis, window and zero padding written into one buffer; the same
            # operations in the same order as torchaudio's, so the same roundings
            padded = frames.new_zeros(frames.shape[:2] + (padded_size,))
            emphasised = padded[..., :window_size]
            torch.mul(frames[..., :1], PREEMPHASIS, out=emphasised[..., :1])
            torch.mul(frames[..., :-1], PREEMPHASIS, out=emphasised[..., 1:])
            torch.sub(frames, emphasised, out=emphasised)
            emphasised.mul_(window)
            del frames
            power = torch.fft.rfft(padded).abs().pow_(2.0)
            del padded
            torch.matmul(power, banks, out=feats[start : start + rows])
            del power
        feats.clamp_min_(LOG_FLOOR).log_()
    valid = torch.arange(max_frames, device=feats.device) < feats_lengths[:, None]
    return feats.masked_fill_(~valid[:, :, None], 0.0), feats_lengths


class KaldiFbankFrontend(AbsFrontend):
    """ESPnet frontend computing :func:`kaldi_fbank` on the fly.

    The batch is computed at once by :func:`kaldi_fbank_batch`, the operations of
    the offline extractor's :func:`kaldi_fbank` on every frame (equal within 1e-5,
    tested), so training on raw audio and on precomputed ``feats.scp`` gives the
    same inputs. No utterance length is read back to the host.

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
                utterance's length, where ``L = num_frames(T)``: ESPnet's model
                cuts the batch to its longest utterance first, so that is
                ``max(feats_lengths)``.
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
        return kaldi_fbank_batch(
            input,
            input_lengths,
            self.fs,
            num_mel_bins=self.n_mels,
            frame_length_ms=self.frame_length_ms,
            frame_shift_ms=self.frame_shift_ms,
            dither=dither,
            waveform_scale=self.waveform_scale,
        )
