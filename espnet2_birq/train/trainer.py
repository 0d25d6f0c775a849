"""ESPnet's trainer with guards against non-finite values and wrong averaging.

:class:`GuardedTrainer` subclasses :class:`espnet2.train.trainer.Trainer` (the
training loop itself is ESPnet's) and adds what ESPnet's loop does not do:

* a training or validation batch whose floating-point inputs hold NaN or inf is
  refused before the forward, naming the utterances, so it can never reach a
  buffer (BatchNorm running statistics, BiRQ's ``v``) or a parameter;
* a non-finite validation loss stops training, naming the batch's utterances
  (ESPnet logs it and keeps going, then averages NaN models);
* ESPnet skips an update whose gradient norm is non-finite and goes on; here
  more than ``--max_consecutive_skipped_updates`` skipped updates in a row stop
  training, and the state buffers a skipped update's forward passes changed are
  put back to their values before those forward passes;
* a buffer that becomes non-finite after an update stops training, naming it
  (state buffers before the next update, the others as described below);
* ESPnet's ``average_nbest_models`` sums integer buffers and turns boolean ones
  into fractions (BiRQ's ``num_updates``, ``v_initialized``): the averaged
  files get those buffers from the newest averaged checkpoint instead;
* an averaged model file holding a non-finite tensor is an error.

Every stop raises :class:`NonFiniteError` (a ``RuntimeError``) whose message
says what was found and where; the training process exits non-zero and the
recipe stops with it.

Under DDP, an error met on one rank (a refused batch, an exception of the data
loader such as a corrupt utterance, a guard's stop) would leave the other ranks
waiting for ever in the next collective. So such errors are recorded, the rank's
batch iterator ends, and ESPnet's own per-batch stop flag (an all-reduce it
already does before every batch) makes the other ranks leave the epoch at their
next batch; then one all-reduce per epoch tells every rank, and each raises:
the failing rank its error, the others :class:`OtherRankError` quoting it.
(An exception inside the model's forward or backward is not caught: DDP's
gradient all-reduce cannot be completed for it; ESPnet's
``--multiprocessing_distributed`` launcher then stops the node's other ranks.)

Cost per update (the guards must not slow a large run down):

* inputs are tested on the host, where the data loader leaves them, by one sum
  per tensor (a NaN or inf makes the sum non-finite; only then, or on an
  overflow, is every element tested);
* before an update only the *state buffers* are copied: the running statistics
  of normalisation layers and one-element buffers (counters, flags, BiRQ's
  ``v``), what a forward pass changes. Large buffers (an EMA teacher, frozen
  quantiser projections and codebooks) are never copied. Their version counters
  are read instead (no device work): a skipped update whose forward changed one
  of them is logged, naming it, since it cannot be put back;
* after an update its state buffers are tested on the device by one
  multi-tensor norm, and the result is copied to the host without waiting. It
  is read right after ESPnet's own test of the next update's gradient norm,
  which has already waited for the device, so it costs no synchronisation. A
  non-finite state buffer thus stops training before the next update is
  applied;
* the other buffers an update changed (found by their version counters: an
  EMA teacher, as large as the encoder, rewritten after every update) are
  tested only when an update is skipped and at the end of the epoch, before
  ESPnet validates and saves the checkpoint. Testing the teacher after every
  update cost 1.1-1.4% of a C2 MT4SSL step on the CPU, and a non-finite teacher
  makes the next loss non-finite (its targets), so that update is skipped and
  the test then names the teacher before another update is applied.

Nothing here reads a device tensor on the host at every step (ESPnet's loop
already does so once per update, for the gradient norm); the model's own
forward does not either (:meth:`espnet2_birq.ssl_model.BirqSSLModel.forward`).
"""

import argparse
import dataclasses
import functools
import logging
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

from espnet2.train.reporter import Reporter
from espnet2.train.trainer import Trainer, TrainerOptions
from espnet2.utils.build_dataclass import build_dataclass

logger = logging.getLogger(__name__)

DEFAULT_MAX_CONSECUTIVE_SKIPPED_UPDATES = 5
SHOWN_UTTS = 10


class NonFiniteError(RuntimeError):
    """Training met NaN/inf in an input, a loss, a buffer or a model file."""


class OtherRankError(RuntimeError):
    """Under DDP: another rank stopped training with an error (quoted in the message)."""


def _rank() -> Optional[int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return None


class _RankFailure:
    """The first error met inside ESPnet's loop on this rank, raised once every rank
    has left the loop (module docstring: an error raised at once on one DDP rank
    leaves the others waiting in their next collective).

    Whoever records an error here stops doing work; the batch iterator
    (:class:`_CheckedIterator`) then ends, which makes ESPnet's loop send its
    "iterator finished" flag to the other ranks.
    """

    def __init__(self):
        self.error: Optional[BaseException] = None

    def record(self, error: BaseException) -> None:
        rank = _rank()
        where = "" if rank is None else f"rank {rank}: "
        if self.error is not None:
            logger.error("%salso: %s: %s", where, type(error).__name__, error)
            return
        self.error = error
        logger.error("%s%s: %s; training stops at the next batch", where, type(error).__name__, error)

    def attempt(self, check) -> bool:
        """Run one of the guard's tests; the NonFiniteError it raises is recorded. False: it raised."""
        try:
            check()
        except NonFiniteError as error:
            self.record(error)
            return False
        return True

    def raise_on_every_rank(self, distributed: bool) -> None:
        """Raise the recorded error; under DDP, every rank raises if any rank recorded one.

        One all-reduce of one flag per epoch; the messages travel only when it is set.
        """
        if distributed and _rank() is not None:
            # NCCL reduces device tensors only; gloo (ESPnet's CPU backend) host tensors
            device = "cuda" if torch.distributed.get_backend() == "nccl" else "cpu"
            flag = torch.tensor([0 if self.error is None else 1], device=device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            if bool(flag):
                own = None if self.error is None else f"{type(self.error).__name__}: {self.error}"
                messages: List[Optional[str]] = [None] * torch.distributed.get_world_size()
                torch.distributed.all_gather_object(messages, own)
                if self.error is None:
                    failed = "; ".join(f"rank {rank}: {text}" for rank, text in enumerate(messages) if text)
                    raise OtherRankError(f"training stopped on every rank because another rank failed ({failed})")
        if self.error is not None:
            raise self.error


@dataclasses.dataclass
class GuardedTrainerOptions(TrainerOptions):
    max_consecutive_skipped_updates: int


def _all_finite(value: torch.Tensor) -> bool:
    """Whether every element is finite: one sum, and an element-wise test only when
    the sum is not finite (a NaN/inf element, or an overflow of finite values)."""
    if bool(torch.isfinite(value.sum())):
        return True
    return bool(torch.isfinite(value).all())


def non_finite_utterances(utt_ids: Sequence[str], batch: Dict[str, torch.Tensor]) -> Dict[str, List[str]]:
    """``{input name: utterance ids}`` of the rows of floating-point inputs holding NaN or inf."""
    found: Dict[str, List[str]] = {}
    for name, value in batch.items():
        if not isinstance(value, torch.Tensor) or not value.is_floating_point():
            continue
        if _all_finite(value):
            continue
        if value.dim() >= 1 and value.shape[0] == len(utt_ids):
            bad_rows = (~torch.isfinite(value.reshape(value.shape[0], -1))).any(dim=1)
            found[name] = [utt_ids[i] for i in bad_rows.nonzero().flatten().tolist()]
        else:
            found[name] = list(utt_ids)
    return found


def describe_utts(utt_ids: Sequence[str]) -> str:
    shown = " ".join(utt_ids[:SHOWN_UTTS])
    return shown + (f" ... ({len(utt_ids)} in all)" if len(utt_ids) > SHOWN_UTTS else "")


class _CheckedIterator:
    """Wraps a batch iterator: refuses non-finite inputs, calls ``before_batch``.

    A refused batch or an exception of the wrapped iterator (the data loader) is
    recorded in ``failure`` and ends the iteration, as does an error recorded
    elsewhere; the trainer raises it once every rank has left the loop.
    Keeps ``len()`` of the wrapped iterator (ESPnet derives its log interval
    from it).
    """

    def __init__(self, iterator, phase: str, failure: _RankFailure, before_batch=None):
        self.iterator = iterator
        self.phase = phase
        self.failure = failure
        self.before_batch = before_batch

    def __len__(self):
        return len(self.iterator)

    def __iter__(self):
        batches = iter(self.iterator)
        while self.failure.error is None:
            try:
                utt_ids, batch = next(batches)
            except StopIteration:
                return
            except Exception as error:  # e.g. a corrupt utterance: raised once all ranks stopped
                self.failure.record(error)
                return
            bad = non_finite_utterances(utt_ids, batch)
            if bad:
                details = "; ".join(f"'{name}' of {describe_utts(ids)}" for name, ids in bad.items())
                self.failure.record(NonFiniteError(
                    f"{self.phase} batch holds NaN or inf input values: {details}. "
                    "Fix or drop these utterances (the recipe's feature extraction refuses them, "
                    "or drops and lists them with --skip_bad_audio true) and re-run."
                ))
                return
            if self.before_batch is not None:
                self.before_batch()
            yield utt_ids, batch


class _ValidLossCheck(torch.nn.Module):
    """Runs the model; a non-finite returned loss is recorded in ``failure`` (which
    ends the validation at the next batch) or, without one, raised."""

    def __init__(self, model: torch.nn.Module, failure: Optional[_RankFailure] = None):
        super().__init__()
        self.model = model
        self.failure = failure

    def forward(self, **batch):
        retval = self.model(**batch)
        loss = retval["loss"] if isinstance(retval, dict) else retval[0]
        if isinstance(loss, torch.Tensor) and not bool(torch.isfinite(loss).all()):
            utt_ids = list(batch.get("utt_id", []))
            error = NonFiniteError(
                f"validation loss is {loss.detach().float().mean().item()} on the batch of "
                f"{describe_utts(utt_ids)}: the model (parameters or buffers) or these inputs "
                "hold non-finite values. Training stopped; look for NaN/inf in the inputs and "
                "for skipped updates ('grad norm is nan') in this log."
            )
            if self.failure is None:
                raise error
            self.failure.record(error)
        return retval


def is_state_buffer(module: torch.nn.Module, name: str, value: torch.Tensor) -> bool:
    """Buffers a forward pass may change, saved before each update: running
    statistics of normalisation layers and one-element buffers (counters, flags)."""
    if isinstance(module, torch.nn.modules.batchnorm._NormBase) and name in (
        "running_mean", "running_var", "num_batches_tracked"
    ):
        return True
    return value.numel() <= 1


class _UpdateGuard:
    """Counts skipped updates in a row, restores the state buffers a skipped update
    changed, and tests the buffers applied updates changed (module docstring):
    state buffers after each update, the others on a skipped update and at the end
    of the epoch. Its errors are recorded in ``failure``; once one is, the guard
    applies no further update.

    ESPnet's loop calls ``optimizer.step()`` only for finite gradient norms and
    ``optimizer.zero_grad()`` after every update window, stepped or skipped; so a
    ``zero_grad`` with no ``step`` since the last one is a skipped update.  The
    methods are patched on the optimizer instance for one epoch (torch's LR
    schedulers patch ``step`` the same way) and restored afterwards.
    """

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, max_skipped: int,
                 failure: _RankFailure):
        self.model = model
        self.optimizer = optimizer
        self.max_skipped = max_skipped
        self.failure = failure
        self.skipped_in_a_row = 0
        self.stepped = False
        # every buffer: qualified name, and (owning module's buffer dict, name in it)
        self.names: List[str] = []
        self.owners: List[tuple] = []
        self.state: List[int] = []  # indices of the state buffers
        for prefix, module in model.named_modules():
            for name, value in module._buffers.items():
                if value is None:
                    continue
                if is_state_buffer(module, name, value):
                    self.state.append(len(self.names))
                self.names.append(f"{prefix}.{name}" if prefix else name)
                self.owners.append((module._buffers, name))
        self.state_set = set(self.state)
        # other buffers changed by applied updates and not tested since (an EMA teacher)
        self.untested: set = set()
        # at the start of the update window: every buffer's tensor and version counter
        self.window_start: Optional[tuple] = None
        self.snapshot: Optional[Dict[int, torch.Tensor]] = None
        # device-side finiteness test of the last applied update, not yet read
        self.pending: Optional[list] = None
        self._orig_step = optimizer.step
        self._orig_zero_grad = optimizer.zero_grad
        # instance attributes present before ours (torch's LR schedulers wrap step there)
        self._previous = {name: vars(optimizer)[name] for name in ("step", "zero_grad") if name in vars(optimizer)}

    def install(self):
        guard = self

        # functools.wraps keeps the attributes torch's LR scheduler puts on its own wrapper
        @functools.wraps(self._orig_step)
        def step(*args, **kwargs):
            # After an error training stops at the next batch: no update on a broken model.
            # ESPnet has just tested the gradient norm on the host, so the device
            # has finished the last update's test: reading it costs nothing.
            if guard.failure.error is not None or not guard.failure.attempt(guard.check_pending):
                return None
            guard.stepped = True
            return guard._orig_step(*args, **kwargs)

        @functools.wraps(self._orig_zero_grad)
        def zero_grad(*args, **kwargs):
            if guard.failure.error is None:
                guard.failure.attempt(guard.end_of_update)
            return guard._orig_zero_grad(*args, **kwargs)

        self.optimizer.step = step
        self.optimizer.zero_grad = zero_grad

    def uninstall(self):
        for name in ("step", "zero_grad"):
            if name in self._previous:
                setattr(self.optimizer, name, self._previous[name])
            elif name in vars(self.optimizer):
                delattr(self.optimizer, name)

    def _tensors(self) -> List[Optional[torch.Tensor]]:
        return [owner.get(name) for owner, name in self.owners]

    def before_batch(self):
        """Called before each forward: remember the buffers at the start of an update window."""
        if self.window_start is not None:
            return
        tensors = self._tensors()
        self.window_start = (tensors, [None if t is None else t._version for t in tensors])
        with torch.no_grad():
            self.snapshot = {i: tensors[i].detach().clone() for i in self.state if tensors[i] is not None}

    def _changed(self) -> List[int]:
        """Buffers written (or replaced) since the window started, by their version counters.

        The counters miss the running statistics that batch normalisation writes
        inside its kernel; those are state buffers, always saved and tested.
        """
        start_tensors, start_versions = self.window_start
        return [
            i for i, (now, then, version) in enumerate(zip(self._tensors(), start_tensors, start_versions))
            if now is not then or (now is not None and now._version != version)
        ]

    def _launch_check(self, indices: Sequence[int]) -> Optional[list]:
        """Queue the finiteness test of the floating-point buffers ``indices``; the
        result travels to the host without blocking and is read by :meth:`_read_check`."""
        tensors = self._tensors()
        groups: Dict[tuple, List[int]] = {}
        for i in indices:
            tensor = tensors[i]
            if tensor is not None and tensor.is_floating_point() and tensor.numel() > 0:
                groups.setdefault((tensor.device, tensor.dtype), []).append(i)
        checks = []
        with torch.no_grad():
            for group in groups.values():
                # a NaN or inf makes the norm non-finite; so may an overflow of finite
                # values, told apart on the host. The 2-norm: one fused kernel on CUDA
                # (clip_grad_norm_'s), the fastest on the CPU.
                norms = torch._foreach_norm([tensors[i].detach() for i in group], 2)
                flags = torch.isfinite(torch.stack(norms))
                event = None
                if flags.is_cuda:
                    host = torch.empty(flags.shape, dtype=flags.dtype, pin_memory=True)
                    host.copy_(flags, non_blocking=True)
                    event = torch.cuda.Event()
                    event.record()
                    flags = host
                checks.append((group, flags, event))
        return checks or None

    def check_pending(self) -> None:
        """Read the test of the last applied update's state buffers; raise naming non-finite ones."""
        checks, self.pending = self.pending, None
        self._read_check(checks)

    def check_untested(self) -> None:
        """Test the other buffers applied updates changed since the last such test (waits
        for the device); raise naming non-finite ones."""
        untested, self.untested = sorted(self.untested), set()
        self._read_check(self._launch_check(untested))

    def end_of_epoch(self) -> None:
        """Test what the epoch's updates left untested (before ESPnet saves the checkpoint)."""
        self.check_pending()
        self.check_untested()

    def _read_check(self, checks: Optional[list]) -> None:
        if checks is None:
            return
        tensors = self._tensors()
        bad = []
        for group, flags, event in checks:
            if event is not None:
                event.synchronize()
            if bool(flags.all()):
                continue
            for i, ok in zip(group, flags.tolist()):
                if not ok and tensors[i] is not None and not bool(torch.isfinite(tensors[i]).all()):
                    bad.append(self.names[i])
        if bad:
            raise NonFiniteError(
                f"after an update, buffer(s) {', '.join(bad[:SHOWN_UTTS])} hold NaN or inf; "
                "training stopped (the model is unusable from here on)"
            )

    def end_of_update(self):
        if self.window_start is None:  # zero_grad outside an update window
            self.stepped = False
            return
        changed = self._changed()
        if self.stepped:
            self.skipped_in_a_row = 0
            self.pending = self._launch_check(self.state)
            self.untested.update(i for i in changed if i not in self.state_set)
        else:
            self.check_pending()
            # A non-finite teacher makes the loss and the gradient non-finite: name it.
            self.check_untested()
            self.skipped_in_a_row += 1
            with torch.no_grad():
                for i, saved in self.snapshot.items():
                    owner, name = self.owners[i]
                    current = owner.get(name)
                    if current is not None and current.shape == saved.shape and current.dtype == saved.dtype:
                        current.copy_(saved)
                    else:
                        owner[name] = saved
            unsaved = [self.names[i] for i in changed if i not in self.state_set]
            logger.warning(
                "update skipped (non-finite gradient norm), %d in a row; state buffers restored "
                "to their values before it%s", self.skipped_in_a_row,
                "" if not unsaved else
                f"; changed by its forward and not restorable: {', '.join(unsaved[:SHOWN_UTTS])}",
            )
            if self.skipped_in_a_row > self.max_skipped:
                raise NonFiniteError(
                    f"{self.skipped_in_a_row} updates in a row were skipped because the gradient "
                    f"norm was not finite (limit --max_consecutive_skipped_updates "
                    f"{self.max_skipped}); training stopped. The loss or its gradient is NaN/inf: "
                    "check the inputs, lower the learning rate or disable AMP."
                )
        self.stepped = False
        self.window_start = None
        self.snapshot = None


def newest_checkpoint_keeps_non_float(output_dir: Path, best_model_criterion, nbest) -> List[Path]:
    """Rewrite ESPnet's averaged model files so that integer and boolean tensors
    come from the newest averaged epoch (ESPnet sums / averages them).

    The epochs behind each ``<phase>.<key>.ave_<n>best.pth`` are found from the
    reporter state saved in ``checkpoint.pth``, exactly as ESPnet chose them.
    Returns the files rewritten.
    """
    checkpoint = output_dir / "checkpoint.pth"
    if not checkpoint.exists():
        return []
    reporter = Reporter()
    reporter.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=False)["reporter"])
    nbests = [nbest] if isinstance(nbest, int) else list(nbest)
    rewritten = []
    for phase, key, mode in best_model_criterion:
        if not reporter.has(phase, key):
            continue
        epochs = reporter.sort_epochs(phase, key, mode)
        for n in nbests:
            path = output_dir / f"{phase}.{key}.ave_{n}best.pth"
            if n <= 1 or path.is_symlink() or not path.is_file() or len(epochs) < n:
                continue
            newest = max(epochs[:n])
            newest_file = output_dir / f"{newest}epoch.pth"
            if not newest_file.exists():
                raise NonFiniteError(f"{newest_file} (newest of the {n} averaged epochs) is missing; cannot fix {path}")
            averaged = torch.load(path, map_location="cpu")
            newest_state = torch.load(newest_file, map_location="cpu")
            changed = False
            for name, value in newest_state.items():
                if isinstance(value, torch.Tensor) and not value.is_floating_point() and not value.is_complex():
                    averaged[name] = value
                    changed = True
            if changed:
                torch.save(averaged, path)
                rewritten.append(path)
                logger.info("%s: integer/boolean buffers taken from %s", path, newest_file)
    return rewritten


def non_finite_tensors(path: Path) -> List[str]:
    """Names of the floating-point tensors of a saved state dict that hold NaN or inf."""
    state = torch.load(path, map_location="cpu", weights_only=False)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    return [
        name for name, value in state.items()
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all())
    ]


def check_averaged_models(output_dir: Path) -> None:
    """Raise naming the first averaged model file that holds a non-finite tensor."""
    for path in sorted(output_dir.glob("*.ave*.pth")):
        if not path.exists():
            continue
        bad = non_finite_tensors(path)
        if bad:
            raise NonFiniteError(
                f"{path}: {len(bad)} tensor(s) hold NaN or inf (first: {', '.join(bad[:5])}); "
                "this model is unusable"
            )


class GuardedTrainer(Trainer):
    """ESPnet's :class:`Trainer` that refuses non-finite values (see the module docstring)."""

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser):
        group = parser.add_argument_group("Non-finite value guards (espnet2_birq)")
        group.add_argument(
            "--max_consecutive_skipped_updates",
            type=int,
            default=DEFAULT_MAX_CONSECUTIVE_SKIPPED_UPDATES,
            help="stop training when more than this many updates in a row are skipped "
            "because the gradient norm is not finite",
        )

    @classmethod
    def build_options(cls, args: argparse.Namespace) -> GuardedTrainerOptions:
        return build_dataclass(GuardedTrainerOptions, args)

    @classmethod
    def run(cls, model, optimizers, schedulers, train_iter_factory, valid_iter_factory,
            plot_attention_iter_factory, trainer_options, distributed_option) -> None:
        super().run(
            model=model,
            optimizers=optimizers,
            schedulers=schedulers,
            train_iter_factory=train_iter_factory,
            valid_iter_factory=valid_iter_factory,
            plot_attention_iter_factory=plot_attention_iter_factory,
            trainer_options=trainer_options,
            distributed_option=distributed_option,
        )
        if not distributed_option.distributed or distributed_option.dist_rank == 0:
            output_dir = Path(trainer_options.output_dir)
            newest_checkpoint_keeps_non_float(
                output_dir, trainer_options.best_model_criterion, trainer_options.keep_nbest_models
            )
            check_averaged_models(output_dir)

    @classmethod
    def train_one_epoch(cls, model, iterator, optimizers, schedulers, scaler, reporter,
                        summary_writer, options, distributed_option) -> bool:
        max_skipped = getattr(options, "max_consecutive_skipped_updates", DEFAULT_MAX_CONSECUTIVE_SKIPPED_UPDATES)
        failure = _RankFailure()
        # One guard per optimizer would count one skip several times; the first is enough
        # (ESPnet skips all optimizers of an update together).
        guard = _UpdateGuard(model, optimizers[0], max_skipped, failure)
        guard.install()
        try:
            all_steps_are_invalid = super().train_one_epoch(
                model=model,
                iterator=_CheckedIterator(iterator, "training", failure, guard.before_batch),
                optimizers=optimizers,
                schedulers=schedulers,
                scaler=scaler,
                reporter=reporter,
                summary_writer=summary_writer,
                options=options,
                distributed_option=distributed_option,
            )
            if failure.error is None:
                failure.attempt(guard.end_of_epoch)
        finally:
            guard.uninstall()
        failure.raise_on_every_rank(distributed_option.distributed)
        if all_steps_are_invalid and not options.no_forward_run:
            # ESPnet only logs this, stops, and the run ends "successfully" with an untrained model
            raise NonFiniteError(
                "no update of this epoch was applied (every gradient norm was NaN/inf); training stopped"
            )
        return all_steps_are_invalid

    @classmethod
    def validate_one_epoch(cls, model, iterator, reporter, options, distributed_option) -> None:
        failure = _RankFailure()
        super().validate_one_epoch(
            model=_ValidLossCheck(model, failure),
            iterator=_CheckedIterator(iterator, "validation", failure),
            reporter=reporter,
            options=options,
            distributed_option=distributed_option,
        )
        failure.raise_on_every_rank(distributed_option.distributed)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m espnet2_birq.train.trainer check MODEL.pth...``: exit 1 naming NaN/inf tensors."""
    import sys

    parser = argparse.ArgumentParser(prog="python -m espnet2_birq.train.trainer", description=main.__doc__)
    parser.add_argument("command", choices=["check"])
    parser.add_argument("models", nargs="+", type=Path)
    args = parser.parse_args(argv)
    status = 0
    for path in args.models:
        bad = non_finite_tensors(path)
        if bad:
            print(f"{path}: {len(bad)} tensor(s) hold NaN or inf, first: {', '.join(bad[:5])}", file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":
    raise SystemExit(main())
