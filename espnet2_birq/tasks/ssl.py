"""ESPnet SSL task with this project's objectives (BEST-RQ, BiRQ).

:class:`BirqSSLTask` extends :class:`espnet2.tasks.ssl.SSLTask`. ESPnet's choice lists
are module-level and closed, so the task declares its own extended lists and its own
``build_model`` (ESPnet's modules are never patched). Differences from ``SSLTask``:

- choices: ``--frontend kaldi_fbank`` (the project's Kaldi-compatible fbank),
  ``--encoder windowed_conformer`` (Conformer with windowed self-attention,
  :mod:`espnet2_birq.encoders`), ``--model birq`` (:class:`BirqSSLModel`), losses
  ``best_rq`` / ``birq`` / ``kmeans_ce`` / ``ema_regression`` (MT4SSL) and the utils ``span_mask``,
  ``learned_mask`` (MT4SSL's masking) and ``ema`` (EMA teacher); ESPnet's own entries
  stay available;
- no token list: targets come from the input, so ``--token_list`` is optional;
- collation pads (and optionally crops) the input only; per-frame targets are computed
  inside the model from the same cropped input, so they stay aligned with the encoder
  frames by construction (ESPnet's HuBERT collate trims labels separately); an
  offline per-frame label stream (``frame_labels``, MT4SSL's k-means ids) is cropped
  with the same window, at encoder-frame resolution.
"""

import argparse
import inspect
from typing import Callable, Collection, Dict, List, Optional, Tuple

import numpy as np
import torch
from typeguard import typechecked

from espnet2.asr.encoder.abs_encoder import AbsEncoder
from espnet2.asr.frontend.abs_frontend import AbsFrontend
from espnet2.ssl.loss.abs_loss import AbsSSLLoss
from espnet2.tasks import ssl as espnet_ssl
from espnet2.tasks.ssl import SSLTask
from espnet2.torch_utils.initialize import initialize
from espnet2.train.abs_espnet_model import AbsESPnetModel
from espnet2.train.class_choices import ClassChoices
from espnet2.train.preprocessor import CommonPreprocessor
from espnet2.utils.types import int_or_none
from espnet2_birq.bilevel import register_update_hooks
from espnet2_birq.collate import CropCollateFn
from espnet2_birq.ema import EMATeacher
from espnet2_birq.encoders.windowed_conformer import WindowedConformerEncoder
from espnet2_birq.features import KaldiFbankFrontend
from espnet2_birq.frame_rate import label_stride
from espnet2_birq.losses.best_rq import BestRQLoss
from espnet2_birq.losses.birq import BiRQLoss
from espnet2_birq.losses.mt4ssl import EMARegressionLoss, KMeansCELoss
from espnet2_birq.masking import FrameSubsampling, LearnedMasking, SpanMasking
from espnet2_birq.ssl_model import BirqSSLModel
from espnet2_birq.train.trainer import GuardedTrainer

frontend_choices = ClassChoices(
    name="frontend",
    classes=dict(
        kaldi_fbank=KaldiFbankFrontend,
        **espnet_ssl.frontend_choices.classes,
    ),
    type_check=AbsFrontend,
    default="kaldi_fbank",
)
encoder_choices = ClassChoices(
    "encoder",
    classes=dict(
        **espnet_ssl.encoder_choices.classes,
        windowed_conformer=WindowedConformerEncoder,
    ),
    type_check=AbsEncoder,
    default=espnet_ssl.encoder_choices.default,
)
model_choices = ClassChoices(
    "model",
    classes=dict(birq=BirqSSLModel, **espnet_ssl.model_choices.classes),
    type_check=AbsESPnetModel,
    default="birq",
)
loss_choices = ClassChoices(
    "loss",
    classes=dict(
        best_rq=BestRQLoss,
        birq=BiRQLoss,
        kmeans_ce=KMeansCELoss,
        ema_regression=EMARegressionLoss,
        **espnet_ssl.loss_choices.classes,
    ),
    type_check=AbsSSLLoss,
    default="best_rq",
)
util_choices = ClassChoices(
    "util",
    classes=dict(
        span_mask=SpanMasking,
        learned_mask=LearnedMasking,
        ema=EMATeacher,
        **espnet_ssl.util_choices.classes,
    ),
    type_check=torch.nn.Module,
    default=None,
)

DEFAULT_LOSS = [{"name": "best_rq", "conf": {}}]
DEFAULT_UTIL = [{"name": "span_mask", "conf": {}}]
#: Offline per-encoder-frame label streams the data loader may give (MT4SSL k-means).
LABEL_STREAMS = ("frame_labels",)


class BirqSSLTask(SSLTask):
    """SSL pre-training task of espnet2-birq (``python -m espnet2_birq.bin.ssl_train``)."""

    trainer = GuardedTrainer  # stops on NaN/inf (espnet2_birq/train/trainer.py)

    class_choices_list = [
        frontend_choices,
        espnet_ssl.specaug_choices,
        espnet_ssl.normalize_choices,
        espnet_ssl.preencoder_choices,
        encoder_choices,
        model_choices,
    ]

    @classmethod
    def add_task_arguments(cls, parser: argparse.ArgumentParser):
        super().add_task_arguments(parser)
        # BEST-RQ/BiRQ targets come from the input: no token list is needed.
        required = parser.get_default("required")
        while "token_list" in required:
            required.remove("token_list")
        # No pre-encoder by default: the quantiser and the encoder read the features.
        parser.set_defaults(loss=DEFAULT_LOSS, util=DEFAULT_UTIL, preencoder=None)
        group = parser.add_argument_group(description="espnet2-birq collation")
        group.add_argument(
            "--max_input_length",
            type=int_or_none,
            default=None,
            help="Randomly crop training inputs longer than this (samples for raw "
            "waveforms, frames for features); None keeps whole utterances",
        )

    @classmethod
    def build_optimizers(
        cls, args: argparse.Namespace, model: torch.nn.Module
    ) -> List[torch.optim.Optimizer]:
        """ESPnet's optimisers, plus the hook that counts optimiser updates.

        Schedules (BiRQ's warm-up, gamma and tau; EMA teachers) count updates through
        it, so they stay in step with the learning-rate schedule under gradient
        accumulation (:mod:`espnet2_birq.bilevel`).
        """
        optimizers = super().build_optimizers(args, model)
        register_update_hooks(model, optimizers)
        return optimizers

    @classmethod
    def optional_data_names(
        cls, train: bool = True, inference: bool = False
    ) -> Tuple[str, ...]:
        return super().optional_data_names(train, inference) + LABEL_STREAMS

    @classmethod
    @typechecked
    def build_collate_fn(cls, args: argparse.Namespace, train: bool) -> Callable[
        [Collection[Tuple[str, Dict[str, np.ndarray]]]],
        Tuple[List[str], Dict[str, torch.Tensor]],
    ]:
        max_length = getattr(args, "max_input_length", None) if train else None
        return CropCollateFn(
            max_length=max_length,
            crop_keys=("speech",),
            label_keys=LABEL_STREAMS,
            label_stride=label_stride(args) if max_length is not None else 1,
        )

    @classmethod
    @typechecked
    def build_preprocess_fn(
        cls, args: argparse.Namespace, train: bool
    ) -> Optional[Callable[[str, Dict[str, np.array]], Dict[str, np.ndarray]]]:
        if not args.use_preprocessor:
            return None
        has_tokens = args.token_list is not None
        return CommonPreprocessor(
            train=train,
            token_type=args.token_type if has_tokens else None,
            token_list=args.token_list if has_tokens else None,
            bpemodel=args.bpemodel if has_tokens else None,
            non_linguistic_symbols=args.non_linguistic_symbols,
            text_cleaner=args.cleaner,
            g2p_type=args.g2p,
        )

    @classmethod
    @typechecked
    def build_model(cls, args: argparse.Namespace) -> AbsESPnetModel:
        token_list = _read_token_list(args)

        # 1. Frontend, or features from the data loader (kaldi_ark, --input_size).
        if args.input_size is None:
            frontend_class = frontend_choices.get_class(args.frontend)
            frontend = frontend_class(**args.frontend_conf)
            input_size = frontend.output_size()
        else:
            args.frontend = None
            args.frontend_conf = {}
            frontend = None
            input_size = args.input_size

        # 2. Spectrogram augmentation (rejected by the birq model, allowed for others)
        specaug = None
        if getattr(args, "specaug", None) is not None:
            specaug_class = espnet_ssl.specaug_choices.get_class(args.specaug)
            specaug = specaug_class(**args.specaug_conf)

        # 3. Normalisation
        normalize = None
        if args.normalize is not None:
            normalize_class = espnet_ssl.normalize_choices.get_class(args.normalize)
            normalize = normalize_class(**args.normalize_conf)

        # 4. Pre-encoder
        preencoder = None
        quantizer_input_size = input_size
        if getattr(args, "preencoder", None) is not None:
            preencoder_class = espnet_ssl.preencoder_choices.get_class(args.preencoder)
            conf = dict(args.preencoder_conf)
            conf.setdefault("input_size", input_size)
            preencoder = preencoder_class(**conf)
            input_size = preencoder.output_size()

        # 5. Encoder
        encoder_class = encoder_choices.get_class(args.encoder)
        encoder = encoder_class(input_size=input_size, **args.encoder_conf)
        subsampling = FrameSubsampling.from_encoder(encoder)

        # 6. Losses; ours also receive the feature size and subsampling factor.
        context = dict(
            encoder_output_size=encoder.output_size(),
            input_size=quantizer_input_size,
            subsampling_factor=subsampling.factor,
            num_encoder_layers=len(getattr(encoder, "encoders", [])),
        )
        losses = build_losses(args.loss, context)
        util_modules, util_attributes, required_inputs = build_util_modules(
            losses, args.util, encoder
        )

        # 7. Model
        model_class = model_choices.get_class(args.model)
        model = model_class(
            vocab_size=len(token_list),
            frontend=frontend,
            specaug=specaug,
            normalize=normalize,
            preencoder=preencoder,
            encoder=encoder,
            token_list=token_list,
            losses=losses,
            util_attributes=util_attributes,
            required_inputs=required_inputs,
            util_modules=util_modules,
            **args.model_conf,
        )
        if args.init is not None:
            initialize(model, args.init)  # the EMA teacher copies the student later
        if "ema" in util_modules:
            # DDP would broadcast every buffer from rank 0 at each forward (the whole
            # teacher); every rank computes the same average of the same synchronised
            # student, so the teacher is left out of DDP's buffer sync.
            torch.nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
                model,
                [name for name, _ in model.named_buffers() if name.startswith("util_modules.ema.")],
            )
        return model



def build_losses(loss_args: List[Dict], context: Dict) -> List[AbsSSLLoss]:
    """Losses of a ``loss`` list, with the sizes each constructor accepts injected.

    Args:
        loss_args: ``[{name: ..., conf: {...}}, ...]`` (``--loss``, or BL-JUST's
            ``--ssl_loss``).
        context: ``encoder_output_size``, ``input_size``, ``subsampling_factor``,
            ``num_encoder_layers``.
    """
    losses = []
    for entry in loss_args:
        loss_class = loss_choices.get_class(entry["name"])
        accepted = inspect.signature(loss_class.__init__).parameters
        injected = {k: v for k, v in context.items() if k in accepted}
        losses.append(loss_class(**injected, **entry.get("conf", {})))
    return losses


def build_util_modules(
    losses: List[AbsSSLLoss], util_args: List[Dict], encoder: torch.nn.Module
) -> Tuple[torch.nn.ModuleDict, set, set]:
    """The utils the losses ask for, configured from ``util_args``.

    Returns:
        util_modules, util_attributes, required_inputs (as ``ESPnetSSLModel`` takes them).
    """
    util_attributes = set()
    required_inputs = set()
    for loss in losses:
        util_attributes.update(loss.util_attributes)
        required_inputs.update(loss.required_inputs)
    util_modules = torch.nn.ModuleDict()
    for attr in sorted(util_attributes):
        util_conf = {}
        for conf_obj in util_args:
            if conf_obj["name"] == attr:
                util_conf = dict(conf_obj.get("conf", {}))
        if attr == "mask":
            util_conf["encoder_embed_dim"] = encoder.output_size()
        if attr == "learned_mask":
            util_conf["encoder_output_size"] = encoder.output_size()
        if attr == "ema":
            util_conf["encoder"] = encoder
        util_modules.update({attr: util_choices.get_class(attr)(**util_conf)})
    return util_modules, util_attributes, required_inputs

def _read_token_list(args: argparse.Namespace) -> List[str]:
    """Token list if one was given (HuBERT-style losses), else an empty list."""
    token_list = getattr(args, "token_list", None)
    if token_list is None:
        return []
    if isinstance(token_list, str):
        with open(token_list, encoding="utf-8") as f:
            tokens = [line.rstrip() for line in f]
        args.token_list = list(tokens)
        return tokens
    if isinstance(token_list, (tuple, list)):
        return list(token_list)
    raise RuntimeError("token_list must be a file name or a list")

