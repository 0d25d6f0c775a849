"""Per-step cost of BiRQ against BEST-RQ (the method and its extra pass: docs/method.md).

BiRQ's extra work over BEST-RQ is one forward and backward pass of the input layer and
the first k blocks on the unmasked input, plus two small projections. This script
measures, on one encoder and one batch, interleaved (A B C D A B C D ... so that clock
and thermal drift hit every variant alike), the median time of

- A ``best_rq``: forward + backward + Adam step of BEST-RQ;
- B ``birq``: the same for BiRQ (labels with gradient, warm-up over);
- C ``birq_sg``: BiRQ with ``stop_gradient_labels: true``;
- D ``prefix``: forward + backward of the input layer and k blocks alone on the batch;
- E ``mt4ssl``: MT4SSL (k-means cross-entropy on given labels + regression of an EMA
  teacher's top layers): the teacher's forward of the whole encoder on the unmasked
  input, and its EMA update after the optimiser step, come on top of BEST-RQ's work;

and prints ``r_min = 1 + D / A`` (the cost of BiRQ if the extra work were exactly the
prefix pass) next to the ratios B / A, C / A and E / A; the target is
``B / A <= r_min + 0.05``.

Memory: on CUDA the peak of ``torch.cuda.max_memory_allocated`` per variant. On CPU no
per-variant peak is reliable (``tracemalloc`` does not see torch's allocator and the
process ``ru_maxrss`` is a high-water mark that interleaving makes meaningless), so the
CPU figure is the size of the tensors autograd saves for the backward pass (a
``saved_tensors_hooks`` count, storages de-duplicated): the activation memory that
distinguishes the variants. It is also printed on CUDA.

Allocator (CPU): with glibc's default malloc, the large tensors of a step are returned
to the system when freed and fault back in, zero-filled, on the next step. That costs
every variant (a quarter of a BEST-RQ step on the development machine) and costs BiRQ
more than its share, because its higher activation peak (two passes alive at once)
sends more allocations to fresh pages. That is a property of the allocator, not of the
method (CUDA's caching allocator keeps its memory), so by default the script re-runs
itself with ``GLIBC_TUNABLES`` set to keep freed memory in the process
(``--allocator retain``); ``--allocator system`` measures glibc's default. The minor
page faults per step are printed either way.

Guard overhead (``--guard_models birq,mt4ssl``, on by default): the same models, batch
and optimisers run whole update steps through ESPnet's training loop, alternately its
plain ``Trainer.train_one_epoch`` and the project's ``GuardedTrainer.train_one_epoch``
(non-finite guards: input test, state-buffer snapshot, skipped-update restore,
state-buffer test after each update, test of the other buffers updates changed at the
end of the epoch), ``--guard_steps`` steps per call, ``--guard_reps`` times each.
Printed per model: the median step of each, their ratio, and the guard's own work per
update (the wall time spent inside the guard's hooks and the model's buffer snapshot and
restore, timed where they are called) as a fraction of the plain step, and apart from it
the guard's work once per epoch (the test of the buffers updates changed besides the
state buffers, e.g. an EMA teacher; a measured "epoch" is only a few steps). MT4SSL holds an
EMA teacher as large as the encoder in buffers: the case a guard copying every buffer
would pay for. The ratio of the two step medians is noisy on a loaded machine; the
guard's work is measured directly and is the figure to read.

Usage::

    python bench/step_cost.py [--encoder conformer] [--device cpu|cuda] [--batch 8]
        [--seconds 8] [--reps 10] [--size debug|base|c2|paper]
        [--allocator retain|system] [--profile]
        [--guard_models birq,mt4ssl|none] [--guard_steps 4] [--guard_reps 3]
"""

import argparse
import contextlib
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from espnet2_birq.bilevel import register_update_hooks  # noqa: E402
from espnet2_birq.ssl_model import run_encoder_prefix  # noqa: E402
from espnet2_birq.tasks.ssl import BirqSSLTask  # noqa: E402

SIZES = {
    # smoke test: the debug config's scale
    "debug": dict(
        encoder=dict(output_size=32, attention_heads=2, linear_units=64, num_blocks=2),
        extra=dict(cnn_module_kernel=7, cgmlp_linear_units=64, cgmlp_conv_kernel=7,
                   merge_conv_kernel=7),
        label_layer=1,
        codebook=64,
    ),
    # mid-size: a Conformer-S-like model (d=144, 8 blocks, k=4) with full codebooks
    "base": dict(
        encoder=dict(output_size=144, attention_heads=4, linear_units=576, num_blocks=8),
        extra=dict(cnn_module_kernel=15, cgmlp_linear_units=576, cgmlp_conv_kernel=15,
                   merge_conv_kernel=15),
        label_layer=4,
        codebook=8192,
    ),
    # the BiRQ paper's LibriSpeech encoder C2 (conf/train_ssl_birq_c2.yaml's shape:
    # d=768, 10 blocks, k=7, 159M encoder) on the shipped config of --encoder
    "c2": dict(
        encoder=dict(output_size=768, attention_heads=12, linear_units=3072, num_blocks=10),
        extra=dict(cnn_module_kernel=31, cgmlp_linear_units=3072, cgmlp_conv_kernel=31,
                   merge_conv_kernel=31),
        label_layer=7,
        codebook=8192,
    ),
    # the shipped config unchanged (conformer: d=512, 24 blocks, k=12, 159M encoder)
    "paper": dict(encoder={}, extra={}, label_layer=None, codebook=8192),
}  # fmt: skip


# glibc: never serve allocations with mmap, never trim the heap: freed memory stays in
# the process and is reused without page faults.
RETAIN_TUNABLES = "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736"
ALLOCATORS = ("retain", "system")  # the first is the default


def allocator_in_use() -> str:
    if platform.libc_ver()[0] != "glibc":
        return "system (not glibc)"
    if os.environ.get("GLIBC_TUNABLES") == RETAIN_TUNABLES:
        return "retain"
    return "system"


def reexec_with_allocator(argv: List[str]) -> None:
    """Re-run this script with the allocator ``--allocator`` asks for (CPU, glibc)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--allocator", default=ALLOCATORS[0], choices=ALLOCATORS)
    parser.add_argument("--device", default="cpu")
    args, _ = parser.parse_known_args(argv)
    if args.allocator != "retain" or args.device != "cpu":
        return
    if platform.libc_ver()[0] != "glibc" or allocator_in_use() == "retain":
        return
    env = dict(os.environ, GLIBC_TUNABLES=RETAIN_TUNABLES)
    os.execve(sys.executable, [sys.executable, str(Path(__file__).resolve()), *argv], env)


def build(loss: str, encoder: str, size: str, stop_gradient: bool = False):
    """BEST-RQ, BiRQ or MT4SSL model from the shipped config of ``encoder``, resized.

    MT4SSL has a shipped config for the conformer only: its losses and utils are put on
    the BEST-RQ config of ``encoder`` (top_k at most the number of blocks).
    """
    config = REPO / "conf" / f"train_ssl_{'best_rq' if loss == 'mt4ssl' else loss}_{encoder}.yaml"
    args = BirqSSLTask.get_parser().parse_args(
        ["--config", str(config), "--input_size", "80"]
    )
    if loss == "mt4ssl":
        mt4ssl = BirqSSLTask.get_parser().parse_args(
            ["--config", str(REPO / "conf" / "train_ssl_mt4ssl_conformer.yaml")]
        )
        args.loss, args.util = mt4ssl.loss, mt4ssl.util
        blocks = SIZES[size]["encoder"].get("num_blocks", args.encoder_conf["num_blocks"])
        args.loss[1]["conf"]["top_k"] = min(args.loss[1]["conf"]["top_k"], blocks)
    spec = SIZES[size]
    args.normalize, args.normalize_conf = "utterance_mvn", {}
    args.encoder_conf.update(spec["encoder"])
    for key, value in spec["extra"].items():
        if key in args.encoder_conf:
            args.encoder_conf[key] = value
    conf = args.loss[0]["conf"]
    if loss != "mt4ssl":
        conf.update(codebook_size=spec["codebook"])
    if loss == "birq":
        conf.update(
            enhanced_codebook_size=spec["codebook"],
            warmup_steps=0,
            stop_gradient_labels=stop_gradient,
        )
        if spec["label_layer"] is not None:
            conf.update(label_layer=spec["label_layer"])
    torch.manual_seed(0)  # identical encoders in every variant
    return BirqSSLTask.build_model(args)


def saved_bytes(fn: Callable[[], torch.Tensor]) -> int:
    """Bytes of the tensors autograd saves while ``fn`` runs (storages counted once)."""
    storages: Dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = fn()
    del loss
    return sum(storages.values())



class GuardTimer:
    """Wall time spent inside the non-finite guards, wherever they are called.

    Wraps the hooks of ``espnet2_birq.train.trainer`` (the input test, the update
    guard's ``before_batch``, ``end_of_update`` and ``check_pending``) and the model's
    ``_buffer_snapshot`` / ``_restore_buffers``; whichever of them exist, so that an
    older version of the trainer is measured the same way. Nested calls count once.
    The guard's ``end_of_epoch`` (once per epoch, the test of an EMA teacher) is timed
    apart, in ``epoch_seconds``: a measured "epoch" here is a few steps, a real one
    thousands.
    """

    TRAINER_HOOKS = ("before_batch", "end_of_update", "check_pending")
    EPOCH_HOOKS = ("end_of_epoch",)

    def __init__(self):
        self.seconds = 0.0
        self.epoch_seconds = 0.0
        self.depth = 0
        self.enabled = True

    def wrap(self, function, bucket="seconds"):
        timer = self

        def timed(*args, **kwargs):
            if timer.depth or not timer.enabled:
                return function(*args, **kwargs)
            timer.depth += 1
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                setattr(timer, bucket, getattr(timer, bucket) + time.perf_counter() - start)
                timer.depth -= 1

        return timed

    @contextlib.contextmanager
    def installed(self):
        from espnet2_birq import ssl_model
        from espnet2_birq.train import trainer

        saved = []

        def patch(owner, name, wrap_static=False, bucket="seconds"):
            if name not in vars(owner):
                return
            original = vars(owner)[name]
            saved.append((owner, name, original))
            if wrap_static:
                setattr(owner, name, staticmethod(self.wrap(original.__func__, bucket)))
            else:
                setattr(owner, name, self.wrap(original, bucket))

        patch(trainer, "non_finite_utterances")
        for hook in self.TRAINER_HOOKS:
            patch(trainer._UpdateGuard, hook)
        for hook in self.EPOCH_HOOKS:
            patch(trainer._UpdateGuard, hook, bucket="epoch_seconds")
        model_class = ssl_model.BirqSSLModel
        patch(model_class, "_buffer_snapshot")
        patch(model_class, "_restore_buffers",
              wrap_static=isinstance(vars(model_class).get("_restore_buffers"), staticmethod))
        try:
            yield self
        finally:
            for owner, name, original in reversed(saved):
                setattr(owner, name, original)


class TimedBatches:
    """A fixed batch ``steps`` times, as a data loader gives it; remembers when each
    one was taken (the start of its training step)."""

    def __init__(self, batch: Dict[str, torch.Tensor], steps: int):
        self.batch, self.steps, self.times = batch, steps, []

    def __len__(self):
        return self.steps

    def __iter__(self):
        utt_ids = [f"utt{i}" for i in range(len(self.batch["speech"]))]
        for _ in range(self.steps):
            self.times.append(time.perf_counter())
            yield list(utt_ids), dict(self.batch)


def run_trainer_epoch(trainer_class, model, optimizer, batch, steps, options, cuda,
                      scheduler=None) -> List[float]:
    """``steps`` update steps through ``trainer_class.train_one_epoch``; the step times."""
    from espnet2.train.distributed_utils import DistributedOption
    from espnet2.train.reporter import Reporter

    batches = TimedBatches(batch, steps)
    reporter = Reporter()
    reporter.set_epoch(1)
    with reporter.observe("train") as sub:
        trainer_class.train_one_epoch(
            model=model, iterator=batches, optimizers=[optimizer], schedulers=[scheduler],
            scaler=None, reporter=sub, summary_writer=None, options=options,
            distributed_option=DistributedOption(distributed=False, ngpu=1 if cuda else 0),
        )  # fmt: skip
    if cuda:
        torch.cuda.synchronize()
    ends = batches.times[1:] + [time.perf_counter()]
    return [end - start for start, end in zip(batches.times, ends)]


def guard_overhead(models, optimizers, inputs, feats, lengths, names, steps, reps, cuda):
    """Plain against guarded ESPnet training steps; the guard's own work per update."""
    from espnet2.train.trainer import Trainer
    from espnet2_birq.train.trainer import GuardedTrainer

    with tempfile.TemporaryDirectory() as tmp:
        options = GuardedTrainer.build_options(BirqSSLTask.get_parser().parse_args(
            ["--output_dir", tmp, "--ngpu", "1" if cuda else "0", "--grad_clip", "5"]))
    results = {}
    timer = GuardTimer()
    batch_device = "cpu"  # where a data loader leaves it; the trainer moves it
    for name in names:
        batch = {"speech": feats.to(batch_device), "speech_lengths": lengths.to(batch_device)}
        batch.update({k: v.to(batch_device) for k, v in inputs[name].items()})
        if cuda:
            batch = {k: v.pin_memory() for k, v in batch.items()}
        times = {"plain": [], "guarded": []}
        guard_seconds, epoch_seconds, guarded_updates, guarded_epochs = 0.0, 0.0, 0, 0
        with timer.installed():
            for rep in range(reps):
                for trainer_name, trainer_class in (("plain", Trainer), ("guarded", GuardedTrainer)):
                    torch.manual_seed(rep)
                    timer.seconds = timer.epoch_seconds = 0.0
                    step_times = run_trainer_epoch(
                        trainer_class, models[name], optimizers[name], batch, steps + 1,
                        options, cuda)
                    times[trainer_name] += step_times[1:]  # the first step warms up
                    if trainer_name == "guarded":
                        # the trainer's hooks and the model's snapshot/restore (the
                        # latter run in the plain trainer's steps too)
                        guard_seconds += timer.seconds
                        epoch_seconds += timer.epoch_seconds
                        guarded_updates += steps + 1
                        guarded_epochs += 1
        plain = statistics.median(times["plain"])
        guarded = statistics.median(times["guarded"])
        results[name] = dict(plain=plain, guarded=guarded, work=guard_seconds / guarded_updates,
                             epoch_work=epoch_seconds / guarded_epochs)
        print(f"repetitions of the guard measurement for {name} done", file=sys.stderr,
              flush=True)
    return results


def main(argv: List[str] = None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--encoder", default="conformer",
                        choices=["conformer", "e_branchformer", "transformer"])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--size", default="base", choices=sorted(SIZES))
    parser.add_argument("--allocator", default=ALLOCATORS[0], choices=ALLOCATORS,
                        help="CPU: keep freed memory in the process (re-runs the "
                        "script with GLIBC_TUNABLES) or glibc's default")
    parser.add_argument("--threads", type=int, default=0,
                        help="CPU threads (0: torch's default)")
    parser.add_argument("--raw", action="store_true",
                        help="also print every repetition's time")
    parser.add_argument("--profile", action="store_true",
                        help="also profile one BiRQ step and print the top operators")
    parser.add_argument("--guard_models", default="birq,mt4ssl",
                        help="models whose guarded ESPnet training step is compared with "
                        "the plain one (comma-separated, 'none' to skip)")
    parser.add_argument("--guard_steps", type=int, default=4,
                        help="measured update steps per trainer call (plus one warm-up)")
    parser.add_argument("--guard_reps", type=int, default=3,
                        help="alternations of plain and guarded trainer calls")
    args = parser.parse_args(argv)  # fmt: skip

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    frames = int(args.seconds * 100)
    generator = torch.Generator().manual_seed(0)
    feats = torch.randn(args.batch, frames, 80, generator=generator).to(device)
    lengths = torch.full((args.batch,), frames, device=device)

    models = {
        "best_rq": build("best_rq", args.encoder, args.size),
        "birq": build("birq", args.encoder, args.size),
        "birq_sg": build("birq", args.encoder, args.size, stop_gradient=True),
        "mt4ssl": build("mt4ssl", args.encoder, args.size),
    }
    # MT4SSL's offline labels (k-means ids in training), one per encoder frame.
    clusters = models["mt4ssl"].losses[0].num_clusters
    labels = {
        "frame_labels": torch.randint(
            0, clusters, (args.batch, frames // 4), generator=generator
        ).to(device),
        "frame_labels_lengths": torch.full((args.batch,), frames // 4, device=device),
    }
    inputs = {name: labels if name == "mt4ssl" else {} for name in models}
    optimizers = {}
    for name, model in models.items():
        model.to(device).train()
        model.global_step = torch.tensor([1], device=device)  # warm-up over
        optimizers[name] = torch.optim.Adam(model.parameters(), lr=1e-4)
        # The EMA teacher's update runs after each optimiser step, as in training.
        register_update_hooks(model, [optimizers[name]])
    prefix_model = models["birq"]
    k = prefix_model.losses[0].label_layer
    params = sum(p.numel() for p in models["best_rq"].parameters())

    def train_step(name: str) -> Callable[[], None]:
        model, optimizer = models[name], optimizers[name]

        def run():
            optimizer.zero_grad(set_to_none=True)
            loss, _, _ = model(feats, lengths, **inputs[name])
            loss.sum().backward()
            optimizer.step()

        return run

    def prefix_forward() -> torch.Tensor:
        # The extra work of BiRQ: the (already normalised) input through embed + k blocks.
        hidden, _ = run_encoder_prefix(prefix_model.encoder, feats, lengths, k)
        return hidden.float().pow(2).mean()

    def prefix_step():
        prefix_model.zero_grad(set_to_none=True)
        prefix_forward().backward()

    steps = {
        "best_rq": train_step("best_rq"),
        "birq": train_step("birq"),
        "birq_sg": train_step("birq_sg"),
        "prefix": prefix_step,
        "mt4ssl": train_step("mt4ssl"),
    }

    def forward_loss(name: str) -> Callable[[], torch.Tensor]:
        if name == "prefix":
            return prefix_forward
        return lambda: models[name](feats, lengths, **inputs[name])[0].sum()

    activation = {name: saved_bytes(forward_loss(name)) for name in steps}
    peak = {name: [] for name in steps}
    times: Dict[str, List[float]] = {name: [] for name in steps}
    faults: Dict[str, List[int]] = {name: [] for name in steps}
    for rep in range(args.reps + 1):  # rep 0 warms up (allocator, lazy buffers)
        for name, step in steps.items():
            torch.manual_seed(rep)  # the same masks and noise in every variant
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            faults_before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            start = time.perf_counter()
            step()
            if cuda:
                torch.cuda.synchronize()
            elapsed = time.perf_counter() - start
            faults_after = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            if rep > 0:
                times[name].append(elapsed)
                faults[name].append(faults_after - faults_before)
                if cuda:
                    peak[name].append(torch.cuda.max_memory_allocated())
        print(f"repetition {rep}/{args.reps} done", file=sys.stderr, flush=True)

    median = {name: statistics.median(values) for name, values in times.items()}
    base = median["best_rq"]
    r_min = 1.0 + median["prefix"] / base
    ratio = median["birq"] / base
    ratio_sg = median["birq_sg"] / base

    print(
        f"encoder={args.encoder} size={args.size} k={k} params={params / 1e6:.2f}M "
        f"device={args.device} threads={torch.get_num_threads()} "
        f"batch={args.batch}x{args.seconds:g}s ({frames} frames) reps={args.reps} "
        f"allocator={allocator_in_use()}"
    )
    print(f"{'variant':10s} {'median s':>9s} {'min s':>8s} {'max s':>8s} "
          f"{'saved act MiB':>14s} {'peak MiB':>9s} {'faults/step':>12s}")  # fmt: skip
    for name in steps:
        peak_text = f"{max(peak[name]) / 2**20:9.0f}" if cuda else f"{'n/a':>9s}"
        print(
            f"{name:10s} {median[name]:9.3f} {min(times[name]):8.3f} "
            f"{max(times[name]):8.3f} {activation[name] / 2**20:14.1f} {peak_text} "
            f"{statistics.median(faults[name]):12.0f}"
        )
    if args.raw:
        for name in steps:
            print(f"raw {name:8s} " + " ".join(f"{t:.3f}" for t in times[name]))
    # Per repetition (the four variants of one repetition run back to back, so slow
    # drift cancels): what BiRQ costs beyond BEST-RQ plus the prefix pass.
    excess = sorted(
        (b - a - d) / a
        for a, b, d in zip(times["best_rq"], times["birq"], times["prefix"])
    )
    quartile = len(excess) // 4
    print(f"r_min = 1 + prefix/best_rq = {r_min:.3f}")
    print(f"birq/best_rq    = {ratio:.3f}")
    print(f"birq_sg/best_rq = {ratio_sg:.3f}")
    print(f"mt4ssl/best_rq  = {median['mt4ssl'] / base:.3f}")
    verdict = "MET" if ratio <= r_min + 0.05 else "MISSED"
    print(f"target birq/best_rq <= r_min + 0.05 = {r_min + 0.05:.3f}: {verdict}")
    print(
        f"per-repetition (birq - best_rq - prefix)/best_rq: median "
        f"{statistics.median(excess):+.3f}, quartiles {excess[quartile]:+.3f} .. "
        f"{excess[len(excess) - 1 - quartile]:+.3f}"
    )

    guard_names = [n for n in args.guard_models.split(",") if n and n != "none"]
    unknown = set(guard_names) - set(models)
    if unknown:
        raise SystemExit(f"--guard_models: unknown {sorted(unknown)}; known {sorted(models)}")
    if guard_names:
        guard = guard_overhead(models, optimizers, inputs, feats, lengths, guard_names,
                               args.guard_steps, args.guard_reps, cuda)
        print(f"guard overhead ({args.guard_reps} x {args.guard_steps} ESPnet training steps "
              f"per trainer, medians):")
        for name, result in guard.items():
            print(
                f"guard {name:8s} plain {result['plain']:.3f} s  guarded "
                f"{result['guarded']:.3f} s  guarded/plain = "
                f"{result['guarded'] / result['plain']:.3f}  guard work "
                f"{result['work'] * 1e3:.2f} ms/update = "
                f"{result['work'] / result['plain']:.4f} of a plain step"
            )
            print(
                f"guard {name:8s} once per epoch {result['epoch_work'] * 1e3:.1f} ms = "
                f"{result['epoch_work'] / result['plain']:.4f} of a plain step"
            )

    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        for name in ("best_rq", "birq"):
            torch.manual_seed(0)
            with profile(activities=activities) as prof:
                steps[name]()
            sort = "self_cuda_time_total" if cuda else "self_cpu_time_total"
            print(f"--- profile {name}")
            print(prof.key_averages().table(sort_by=sort, row_limit=15))


if __name__ == "__main__":
    reexec_with_allocator(sys.argv[1:])
    main()
