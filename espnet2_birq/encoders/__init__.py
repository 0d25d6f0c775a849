"""Encoders of espnet2-birq (registered as ``--encoder`` choices of its tasks).

- ``windowed_conformer``: ESPnet's Conformer with windowed self-attention
  (:mod:`espnet2_birq.encoders.windowed_conformer`); the SSL task registers it in its
  choice list, the ASR tasks through :mod:`espnet2_birq.encoders.asr_task`.
"""

from espnet2_birq.encoders.windowed_conformer import (  # noqa: F401
    WindowedConformerEncoder,
    apply_attention_window,
    attention_window_of,
)
