"""The ``windowed_conformer`` encoder choice for ESPnet's ASR task and its subclasses.

ESPnet's :class:`espnet2.tasks.asr.ASRTask` builds its encoder from a module-level,
closed choice list, which this project does not patch. :class:`WindowedEncoderASRMixin`
gives an ASR task class (``class T(WindowedEncoderASRMixin, ASRTask)``):

- a ``--encoder`` choice list with ``windowed_conformer`` added (parsing and
  ``--print_config``);
- a ``build_model`` that, for ``windowed_conformer``, lets ESPnet build the model with
  its own ``conformer`` from the same ``encoder_conf`` minus ``attention_window``, then
  applies the window to that encoder in place
  (:func:`espnet2_birq.encoders.windowed_conformer.apply_attention_window`). The
  window adds no parameter, so this is the same network as
  :class:`WindowedConformerEncoder` (same state dict, same outputs), and everything
  else ESPnet's ``build_model`` does (token list, CTC, initialisation) is untouched.
  ``args`` keeps ``encoder: windowed_conformer``, so the ``config.yaml`` ESPnet writes
  rebuilds the windowed model.

Tools that build an ASR model from a config must go through such a task class
(``espnet2_birq.bin.asr_train.GuardedASRTask``): ESPnet's own ``ASRTask`` rejects
``--encoder windowed_conformer`` with its "must be one of" error.
"""

import argparse
import inspect

from espnet2.asr.encoder.abs_encoder import AbsEncoder
from espnet2.tasks import asr as espnet_asr
from espnet2.train.class_choices import ClassChoices
from espnet2_birq.encoders.windowed_conformer import (
    WindowedConformerEncoder,
    apply_attention_window,
)

WINDOWED = "windowed_conformer"

encoder_choices = ClassChoices(
    "encoder",
    classes=dict(**espnet_asr.encoder_choices.classes, windowed_conformer=WindowedConformerEncoder),
    type_check=AbsEncoder,
    default=espnet_asr.encoder_choices.default,
)


def _with_windowed_encoder(choices_list):
    return [encoder_choices if c is espnet_asr.encoder_choices else c for c in choices_list]


class WindowedEncoderASRMixin:
    """Adds ``--encoder windowed_conformer`` to an ``ASRTask`` subclass (module docstring)."""

    class_choices_list = _with_windowed_encoder(espnet_asr.ASRTask.class_choices_list)

    @classmethod
    def build_model(cls, args: argparse.Namespace):
        if getattr(args, "encoder", None) != WINDOWED:
            return super().build_model(args)
        conf = dict(args.encoder_conf)
        default = inspect.signature(WindowedConformerEncoder).parameters["attention_window"].default
        window = conf.pop("attention_window", default)
        plain = argparse.Namespace(**vars(args))
        plain.encoder = "conformer"
        plain.encoder_conf = conf
        model = super().build_model(plain)
        # ESPnet's build_model rewrites some arguments (token_list read from its file):
        # keep those, but not the encoder swap.
        for key, value in vars(plain).items():
            if key not in ("encoder", "encoder_conf"):
                setattr(args, key, value)
        apply_attention_window(model.encoder, window)
        return model
