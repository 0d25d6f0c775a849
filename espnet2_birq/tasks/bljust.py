"""BL-JUST task: ESPnet's ASR task trained jointly on labelled and unlabelled data.

:class:`BlJustTask` extends :class:`espnet2.tasks.asr.ASRTask` (``python -m
espnet2_birq.bin.bljust_train``). Everything of the ASR task stays (model ``espnet``,
its frontends, heads, token lists, validation with CER); on top of it:

- ``--ssl_loss`` / ``--ssl_util``: the self-supervised loss(es) on the unlabelled data,
  any of :mod:`espnet2_birq.tasks.ssl`'s loss choices, configured as ``--loss`` /
  ``--util`` there (they receive the same injected sizes);
- ``--bljust_conf``: the schedule (:class:`espnet2_birq.bljust.BlJustSchedule`);
- ``--unlabelled_data_path_and_name_and_type`` / ``--unlabelled_shape_file``: the
  unlabelled set (one ``speech`` entry), read by :class:`PairedIterFactory` next to the
  labelled training set.

The ``config.yaml`` it writes keeps ``model: espnet``; ESPnet's ASR task ignores the
extra keys, so ``espnet2.bin.asr_inference`` decodes the result as any ASR model.
"""

import argparse
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader
from typeguard import typechecked

from espnet2.iterators.abs_iter_factory import AbsIterFactory
from espnet2.iterators.sequence_iter_factory import SequenceIterFactory
from espnet2.samplers.build_batch_sampler import build_batch_sampler
from espnet2.tasks.asr import ASRTask
from espnet2_birq.train.trainer import GuardedTrainer
from espnet2.train.dataset import ESPnetDataset
from espnet2.train.distributed_utils import DistributedOption
from espnet2.utils.nested_dict_action import NestedDictAction
from espnet2.utils.types import int_or_none, str2triple_str
from espnet2_birq.bilevel import register_update_hooks
from espnet2_birq.bljust import (
    BlJustASRModel,
    BlJustBranch,
    BlJustSchedule,
    SharedEncoderSSLModel,
    register_lr_scale_hooks,
)
from espnet2_birq.collate import CropCollateFn
from espnet2_birq.ema import EMATeacher
from espnet2_birq.encoders.asr_task import WindowedEncoderASRMixin
from espnet2_birq.masking import FrameSubsampling
from espnet2_birq.tasks.ssl import (
    DEFAULT_LOSS,
    DEFAULT_UTIL,
    build_losses,
    build_util_modules,
)

UNLABELLED_PREFIX = "unlabelled_"
EPOCH_KEY = "bljust_epoch"


class PairedDataset(torch.utils.data.Dataset):
    """Items of two datasets, addressed by ``(side, key)`` with side 0 or 1."""

    def __init__(self, labelled, unlabelled):
        self.datasets = (labelled, unlabelled)

    def __getitem__(self, index: Tuple[int, str]):
        side, key = index
        return side, self.datasets[side][key]


class PairedCollate:
    """Collate a mixed list of labelled and unlabelled items into one batch.

    The unlabelled entries get the prefix ``unlabelled_``; ``bljust_epoch`` tells the
    model the epoch (its phases depend on it). The keys are the labelled utterances,
    or the unlabelled ones in a batch without labelled items (exploration).
    """

    def __init__(self, labelled_collate, unlabelled_collate, epoch: int):
        self.collates = (labelled_collate, unlabelled_collate)
        self.epoch = epoch

    def __call__(self, items):
        labelled = [item for side, item in items if side == 0]
        unlabelled = [item for side, item in items if side == 1]
        keys, batch = self.collates[0](labelled) if labelled else (None, {})
        if unlabelled:
            unlabelled_keys, unlabelled_batch = self.collates[1](unlabelled)
            keys = unlabelled_keys if keys is None else keys
            for name, value in unlabelled_batch.items():
                batch[UNLABELLED_PREFIX + name] = value
        batch[EPOCH_KEY] = torch.tensor([self.epoch], dtype=torch.long)
        return keys, batch


class PairedIterFactory(AbsIterFactory):
    """Every batch: one labelled mini-batch and one unlabelled mini-batch.

    The labelled batches of an epoch are exactly those ESPnet's
    :class:`SequenceIterFactory` gives (every labelled utterance once per epoch,
    reshuffled with ``seed + epoch``; or ``--num_iters_per_epoch`` of them). The
    unlabelled batches form an endless stream of passes over the unlabelled set, pass
    ``p`` shuffled with ``seed + p``; epoch ``e`` takes the stream's items from
    ``(e - 1) * n`` on (``n`` batches per epoch), so the shorter set is cycled, nothing
    is skipped, and a resumed run continues exactly where it stopped. Epochs in which
    the model needs no unlabelled data (``labelled_only_epoch``) load none, and the
    first ``unlabelled_only_batches(epoch)`` batches of an epoch, which train the SSL
    loss alone (BL-JUST's exploration updates), load no labelled data: the labelled
    batches at those positions are not read in that epoch (the updates would throw
    them away).
    """

    @typechecked
    def __init__(
        self,
        labelled: SequenceIterFactory,
        unlabelled_dataset: Any,
        unlabelled_batches: Sequence[Sequence[str]],
        unlabelled_collate: Any,
        seed: int = 0,
        labelled_only_epoch: Any = None,
        unlabelled_only_batches: Any = None,
    ):
        if len(unlabelled_batches) == 0:
            raise ValueError("the unlabelled set has no mini-batches")
        self.labelled = labelled
        self.unlabelled_dataset = unlabelled_dataset
        self.unlabelled_batches = [list(b) for b in unlabelled_batches]
        self.unlabelled_collate = unlabelled_collate
        self.seed = seed
        self.labelled_only_epoch = labelled_only_epoch or (lambda epoch: False)
        self.unlabelled_only_batches = unlabelled_only_batches or (lambda epoch: 0)

    def unlabelled_pass(self, index: int, shuffle: bool) -> List[List[str]]:
        batches = [list(b) for b in self.unlabelled_batches]
        if shuffle:
            np.random.RandomState(index + self.seed).shuffle(batches)
        return batches

    def unlabelled_stream(self, start: int, count: int, shuffle: bool):
        """``count`` batches of the unlabelled stream from position ``start``."""
        size = len(self.unlabelled_batches)
        out: List[List[str]] = []
        position = start
        while len(out) < count:
            index, offset = divmod(position, size)
            chunk = self.unlabelled_pass(index, shuffle)[offset : offset + count - len(out)]
            out.extend(chunk)
            position += len(chunk)
        return out

    def build_iter(self, epoch: int, shuffle: Optional[bool] = None) -> DataLoader:
        if shuffle is None:
            shuffle = self.labelled.shuffle
        labelled_loader = self.labelled.build_iter(epoch, shuffle)
        labelled_batches = [list(b) for b in labelled_loader.batch_sampler]
        n = len(labelled_batches)
        if self.labelled_only_epoch(epoch):
            unlabelled_batches = [[] for _ in range(n)]
        else:
            unlabelled_batches = self.unlabelled_stream((epoch - 1) * n, n, shuffle)
        exploring = 0 if self.labelled_only_epoch(epoch) else self.unlabelled_only_batches(epoch)
        batches = [
            ([] if index < exploring else [(0, k) for k in lab]) + [(1, k) for k in unl]
            for index, (lab, unl) in enumerate(zip(labelled_batches, unlabelled_batches))
        ]
        return DataLoader(
            dataset=PairedDataset(self.labelled.dataset, self.unlabelled_dataset),
            batch_sampler=batches,
            num_workers=self.labelled.num_workers,
            pin_memory=self.labelled.pin_memory,
            worker_init_fn=labelled_loader.worker_init_fn,
            collate_fn=PairedCollate(
                self.labelled.collate_fn, self.unlabelled_collate, epoch
            ),
        )


class BlJustTask(WindowedEncoderASRMixin, ASRTask):
    """ASR task trained with BL-JUST (:mod:`espnet2_birq.bljust`).

    ``--encoder windowed_conformer`` is a choice too (:mod:`espnet2_birq.encoders`).
    """

    # Stops on NaN/inf inputs, validation losses and runs of skipped updates, as the
    # SSL and fine-tuning stages do (espnet2_birq/train/trainer.py).
    trainer = GuardedTrainer

    @classmethod
    def add_task_arguments(cls, parser: argparse.ArgumentParser):
        super().add_task_arguments(parser)
        # Some parameters get no gradient in some phases (ASR heads while exploring,
        # SSL heads in the final phase): DDP must not wait for them.
        parser.set_defaults(unused_parameters=True)
        group = parser.add_argument_group(description="BL-JUST")
        group.add_argument(
            "--unlabelled_data_path_and_name_and_type",
            type=str2triple_str,
            action="append",
            default=[],
            help="Unlabelled training data (one 'speech' entry), e.g. "
            "dump/fbank/pretrain/feats.scp,speech,kaldi_ark",
        )
        group.add_argument(
            "--unlabelled_shape_file",
            type=str,
            action="append",
            default=[],
            help="Shape file of the unlabelled data (batching, as --train_shape_file)",
        )
        group.add_argument(
            "--unlabelled_batch_bins",
            type=int_or_none,
            default=None,
            help="batch_bins of the unlabelled batches (default: --batch_bins)",
        )
        group.add_argument(
            "--unlabelled_max_input_length",
            type=int_or_none,
            default=None,
            help="Randomly crop unlabelled inputs longer than this (frames); None "
            "keeps whole utterances",
        )
        group.add_argument(
            "--ssl_loss",
            action=NestedDictAction,
            default=DEFAULT_LOSS,
            help="Self-supervised loss(es) on the unlabelled data, as --loss of "
            "espnet2_birq.bin.ssl_train (best_rq, birq, ...)",
        )
        group.add_argument(
            "--ssl_util",
            action=NestedDictAction,
            default=DEFAULT_UTIL,
            help="SSL helper modules (span_mask, learned_mask, ema), as --util of "
            "espnet2_birq.bin.ssl_train",
        )
        group.add_argument(
            "--bljust_conf",
            action=NestedDictAction,
            default=dict(),
            help="Schedule: gamma_schedule, gamma_0, gamma_max, gamma_ramp_steps, "
            "gamma_step_interval, v_momentum, exploration_updates, final_epochs, "
            "final_lr_scale (espnet2_birq.bljust.BlJustSchedule)",
        )

    # ------------------------------------------------------------------ model
    @classmethod
    @typechecked
    def build_model(cls, args: argparse.Namespace) -> BlJustASRModel:
        asr_model = super().build_model(args)
        encoder = asr_model.encoder
        subsampling = FrameSubsampling.from_encoder(encoder)
        if asr_model.frontend is not None:
            input_size = asr_model.frontend.output_size()
        else:
            input_size = args.input_size
        context = dict(
            encoder_output_size=encoder.output_size(),
            input_size=input_size,
            subsampling_factor=subsampling.factor,
            num_encoder_layers=len(getattr(encoder, "encoders", [])),
        )
        losses = build_ssl_losses(args.ssl_loss, context)
        util_modules, util_attributes, required_inputs = build_util_modules(
            losses, args.ssl_util, encoder
        )
        ssl = SharedEncoderSSLModel(
            frontend=asr_model.frontend,
            normalize=asr_model.normalize,
            preencoder=asr_model.preencoder,
            encoder=encoder,
            token_list=[],
            losses=losses,
            util_attributes=util_attributes,
            required_inputs=required_inputs,
            util_modules=util_modules,
        )
        schedule = BlJustSchedule(
            **dict(args.bljust_conf), max_epoch=getattr(args, "max_epoch", None)
        )
        model = BlJustASRModel.from_asr_model(asr_model, BlJustBranch(ssl, schedule))
        keep_teachers_out_of_buffer_sync(model)
        return model

    @classmethod
    def build_optimizers(
        cls, args: argparse.Namespace, model: torch.nn.Module
    ) -> List[torch.optim.Optimizer]:
        """ESPnet's optimisers, the update counter hooks and the final-phase LR scale."""
        optimizers = super().build_optimizers(args, model)
        register_update_hooks(model, optimizers)
        register_lr_scale_hooks(model, optimizers)
        return optimizers

    # --------------------------------------------------------------- iterators
    @classmethod
    def build_iter_factory(
        cls,
        args: argparse.Namespace,
        distributed_option: DistributedOption,
        mode: str,
        kwargs: Optional[dict] = None,
    ) -> AbsIterFactory:
        labelled = super().build_iter_factory(args, distributed_option, mode, kwargs)
        if mode != "train" or args.collect_stats:
            return labelled
        if not isinstance(labelled, SequenceIterFactory):
            raise ValueError(
                f"BL-JUST needs --iterator_type sequence, got {args.iterator_type}"
            )
        dataset, batches = cls.build_unlabelled_data(args, distributed_option)
        schedule = BlJustSchedule(
            **dict(args.bljust_conf), max_epoch=getattr(args, "max_epoch", None)
        )
        accum_grad = getattr(args, "accum_grad", 1)
        return PairedIterFactory(
            labelled,
            dataset,
            batches,
            CropCollateFn(
                max_length=args.unlabelled_max_input_length,
                crop_keys=("speech",),
                int_pad_value=-1,
            ),
            seed=args.seed,
            labelled_only_epoch=schedule.is_final_epoch,
            # Exploration updates train the SSL loss alone: no labelled batch is read.
            unlabelled_only_batches=lambda epoch: schedule.exploration_batches(
                epoch, accum_grad
            ),
        )

    @classmethod
    def build_unlabelled_data(
        cls, args: argparse.Namespace, distributed_option: DistributedOption
    ) -> Tuple[ESPnetDataset, List[List[str]]]:
        paths = args.unlabelled_data_path_and_name_and_type
        shapes = args.unlabelled_shape_file
        if not paths or not shapes:
            raise ValueError(
                "BL-JUST needs unlabelled data: give --unlabelled_data_path_and_name_"
                "and_type (e.g. dump/fbank/<pretrain_set>/feats.scp,speech,kaldi_ark) "
                "and --unlabelled_shape_file"
            )
        names = [name for _, name, _ in paths]
        if names != ["speech"]:
            raise ValueError(
                f"the unlabelled data must be one 'speech' entry, got names {names}"
            )
        for shape in shapes:
            with open(shape, encoding="utf-8") as f:
                if not any(line.strip() for line in f):
                    raise ValueError(
                        f"the unlabelled set is empty: {shape} lists no utterances "
                        f"(data: {paths[0][0]}); BL-JUST needs unlabelled data"
                    )
        batch_sampler = build_batch_sampler(
            type=args.batch_type,
            shape_files=shapes,
            fold_lengths=args.fold_length,
            batch_size=args.batch_size,
            batch_bins=args.unlabelled_batch_bins or args.batch_bins,
            sort_in_batch=args.sort_in_batch,
            sort_batch=args.sort_batch,
            drop_last=args.drop_last_iter,
            min_batch_size=(
                torch.distributed.get_world_size()
                if distributed_option.distributed
                else args.min_batch_size
            ),
        )
        batches = [list(b) for b in batch_sampler]
        if distributed_option.distributed:
            world_size = torch.distributed.get_world_size()
            rank = torch.distributed.get_rank()
            batches = [batch[rank::world_size] for batch in batches]
        dataset = ESPnetDataset(
            paths,
            float_dtype=args.train_dtype,
            preprocess=cls.build_preprocess_fn(args, train=True),
            max_cache_size=args.max_cache_size,
            max_cache_fd=args.max_cache_fd,
            allow_multi_rates=args.allow_multi_rates,
        )
        return dataset, batches


def keep_teachers_out_of_buffer_sync(model: torch.nn.Module) -> List[str]:
    """Leave the buffers of every EMA teacher (util ``ema``) out of DDP's broadcast.

    DDP would broadcast every buffer from rank 0 at each forward, a whole copy of the
    encoder for a teacher; every rank averages the same synchronised student, so the
    teachers agree without it (as in the SSL task, :mod:`espnet2_birq.tasks.ssl`).

    Returns:
        The names of the buffers left out.
    """
    prefixes = tuple(
        f"{name}." for name, module in model.named_modules() if isinstance(module, EMATeacher)
    )
    names = [name for name, _ in model.named_buffers() if prefixes and name.startswith(prefixes)]
    if names:
        torch.nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
            model, names
        )
    return names


def build_ssl_losses(loss_args: List[Dict], context: Dict[str, Any]) -> list:
    """SSL losses from ``--ssl_loss``, with the sizes they accept injected."""
    losses = build_losses(loss_args, context)
    if not losses:
        raise ValueError("--ssl_loss is empty: BL-JUST needs a self-supervised loss")
    return losses
