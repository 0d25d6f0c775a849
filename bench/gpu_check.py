"""One-command GPU check of C2 BiRQ and BEST-RQ pre-training (``bench/gpu_check.sh``).

For each of the two configs (default ``conf/train_ssl_birq_c2.yaml`` and
``conf/train_ssl_best_rq_c2.yaml``: the BiRQ paper's 10-block, 155M-parameter Conformer),
on generated data, at the paper's batch of 64 utterances:

* time per update of 64 utterances of ``--seconds`` (15) s (when 64 do not fit the GPU
  at once, ESPnet's gradient accumulation over the largest micro-batch that fits, as the
  configs prescribe for fewer GPUs), utterances and seconds of audio per second, peak
  GPU memory;
* the BiRQ / BEST-RQ update-time ratio;
* model FLOPs per update (matrix products and convolutions of the forward and backward
  pass, counted by ``torch.utils.flop_counter.FlopCounterMode`` on one micro-batch) and
  the resulting share of the GPU's dense bf16 peak (:data:`PEAK_BF16_TFLOPS` by device
  name, else ``--peak_tflops``);
* the estimated GPU-hours of ``--epochs`` epochs of ``--hours`` hours of audio
  (LibriSpeech 960 h, 100 epochs), taking the cost of an update as proportional to its
  seconds of audio (measured on ``--seconds`` s utterances, so with LibriSpeech's
  12.3 s average the estimate errs on the high side: attention grows faster than
  linearly with length);
* with two GPUs or more (or ``--ddp on``), a 2-process DDP smoke run of BiRQ
  (``torch.distributed.run --nproc_per_node 2``, NCCL; gloo on the CPU).

What is timed is what a real run pays per update: the model built by
``BirqSSLTask.build_model`` from the config, the task's optimiser (with the update
hooks) and scheduler, and ESPnet's training loop itself, run through the project's
``GuardedTrainer.train_one_epoch``: the batch is copied to the GPU, the forward runs
under ESPnet's autocast (bf16 where the GPU supports it, the config's ``use_amp``) with
its grad scaler, then the backward, gradient clipping, the gradient-norm test, the
optimiser and scheduler steps, the update hooks and the non-finite guards. The input is
what the LibriSpeech recipe feeds (``--input raw``: 16 kHz waveforms through the in-model
fbank frontend; ``--input fbank``: precomputed features) and is generated (noise
waveforms, or fbank-like random features), the same batch at every step (pinned host
memory, as ESPnet's loader gives it). Left out: reading and
decoding audio (data-loader workers, in parallel), validation and checkpoints (once per
epoch). Calling ``espnet2_birq.bin.ssl_train`` on a generated dump would add these and
the start-up, not change the step, and would not fit the time budget.

With ``--device cpu`` it runs a toy model (the debug configs' size: batch 2, 1 s, 2
updates) in well under a minute: ``tests/test_bench.py`` runs it so that it keeps working.
Results are printed and written to ``--out_dir`` as ``gpu_check.json`` and
``gpu_check.md``.

Usage::

    bash bench/gpu_check.sh [--out_dir exp/gpu_check] [--peak_tflops 989]
    python bench/gpu_check.py --device cpu --out_dir /tmp/gpu_check
"""

import time

START = time.perf_counter()  # the check's wall time counts the imports too

import argparse  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Dict, List, Optional  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from espnet2_birq.tasks.ssl import BirqSSLTask  # noqa: E402
from espnet2_birq.train.trainer import GuardedTrainer  # noqa: E402

#: Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) by ``torch.cuda.get_device_name``.
PEAK_BF16_TFLOPS = {"H100 SXM": 989.0, "H100 PCIe": 756.0, "H200": 989.0, "A100": 312.0}

#: The C2 encoder, used when a config file is missing: the shipped conformer config of
#: the method with this shape (what conf/train_ssl_{birq,best_rq}_c2.yaml hold).
C2_ENCODER = dict(output_size=768, attention_heads=12, linear_units=3072, num_blocks=10,
                  cnn_module_kernel=31)  # fmt: skip
C2_LABEL_LAYER = 7

#: ``--size toy``: the debug configs' scale.
TOY_ENCODER = dict(output_size=32, attention_heads=2, linear_units=64, num_blocks=2,
                   cnn_module_kernel=7)  # fmt: skip
TOY_LOSS = dict(codebook_size=64, enhanced_codebook_size=64, label_layer=1)

METHODS = ("birq", "best_rq")
SAMPLE_RATE = 16000
FEAT_DIM = 80


def peak_tflops(device_name: str) -> Optional[float]:
    """Dense bf16 peak of a device by name, ``None`` if unknown."""
    name = device_name.upper()
    if "NVL" in name:  # NVL variants run at other clocks: ask for --peak_tflops
        return None
    if "H100" in name:
        return PEAK_BF16_TFLOPS["H100 PCIe" if "PCIE" in name else "H100 SXM"]
    if "H200" in name:
        return PEAK_BF16_TFLOPS["H200"]
    if "A100" in name:
        return PEAK_BF16_TFLOPS["A100"]
    return None


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--birq_config", type=Path, default=REPO / "conf" / "train_ssl_birq_c2.yaml")
    parser.add_argument("--best_rq_config", type=Path,
                        default=REPO / "conf" / "train_ssl_best_rq_c2.yaml")
    parser.add_argument("--size", choices=["config", "toy"], default=None,
                        help="config: the configs as they are (default on cuda); toy: the "
                        "debug scale (default on cpu)")
    parser.add_argument("--batch", type=int, default=None, help="utterances per step (64; toy 2)")
    parser.add_argument("--seconds", type=float, default=None,
                        help="length of every generated utterance (15; toy 1)")
    parser.add_argument("--input", choices=["raw", "fbank"], default="raw",
                        help="raw: waveforms through the in-model fbank frontend (the "
                        "LibriSpeech recipe's feats_type=raw); fbank: precomputed features")
    parser.add_argument("--micro_batch", default="auto",
                        help="utterances per forward; auto: the whole batch, halved while "
                        "it does not fit (ESPnet's accum_grad makes up the update)")
    parser.add_argument("--steps", type=int, default=None, help="timed updates (10; toy 2)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed first updates (3; toy 1)")
    parser.add_argument("--amp", choices=["config", "off"], default="config",
                        help="config: the config's use_amp (ESPnet: bf16 autocast where "
                        "supported) on cuda; always off on cpu")
    parser.add_argument("--flops", choices=["on", "off"], default="on")
    parser.add_argument("--peak_tflops", type=float, default=None,
                        help="dense bf16 peak of this device (default: table by name)")
    parser.add_argument("--ddp", choices=["auto", "on", "off"], default="auto",
                        help="2-process DDP smoke run: auto = with >= 2 GPUs")
    parser.add_argument("--ddp_batch", type=int, default=None,
                        help="utterances per process in the DDP run (default batch / 2)")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--hours", type=float, default=960.0, help="hours of audio per epoch")
    parser.add_argument("--avg_utt_s", type=float, default=12.3,
                        help="average utterance length of the corpus (LibriSpeech 960 h)")
    parser.add_argument("--out_dir", type=Path, default=REPO / "exp" / "gpu_check")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--ddp_worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    toy = args.device == "cpu"
    if args.size is None:
        args.size = "toy" if toy else "config"
    defaults = dict(batch=2, seconds=1.0, steps=2, warmup=1) if args.size == "toy" else dict(
        batch=64, seconds=15.0, steps=10, warmup=3)
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.methods = [m for m in args.methods.split(",") if m]
    unknown = set(args.methods) - set(METHODS)
    if unknown:
        parser.error(f"--methods: unknown {sorted(unknown)}")
    return args


def config_of(method: str, args: argparse.Namespace) -> Path:
    return args.birq_config if method == "birq" else args.best_rq_config


def task_args(method: str, args: argparse.Namespace, work: Path) -> argparse.Namespace:
    """The task's arguments for ``method``: its config (or the C2 shape on the shipped
    conformer config when the file is missing), resized for ``--size toy``."""
    config = config_of(method, args)
    fallback = not config.exists()
    if fallback:
        config = REPO / "conf" / f"train_ssl_{method}_conformer.yaml"
    cmd = ["--config", str(config), "--output_dir", str(work),
           "--ngpu", "1" if args.device == "cuda" else "0"]  # fmt: skip
    if args.input == "fbank":
        cmd += ["--input_size", str(FEAT_DIM)]
    targs = BirqSSLTask.get_parser().parse_args(cmd)
    targs.gpu_check_config = f"{config}" + (" (C2 shape: config missing)" if fallback else "")
    loss_conf = targs.loss[0]["conf"]
    if fallback:
        targs.encoder_conf.update(C2_ENCODER)
        if method == "birq":
            loss_conf["label_layer"] = C2_LABEL_LAYER
    if args.size == "toy":
        targs.encoder_conf.update(TOY_ENCODER)
        loss_conf.update({k: v for k, v in TOY_LOSS.items() if method == "birq" or k == "codebook_size"})
    if args.device == "cpu" or args.amp == "off":
        targs.use_amp = False
    return targs


def generated_batch(args: argparse.Namespace, seed: int = 0) -> Dict[str, torch.Tensor]:
    """Noise waveforms (``--input raw``) or fbank-like features, full length."""
    generator = torch.Generator().manual_seed(seed)
    if args.input == "raw":
        samples = int(args.seconds * SAMPLE_RATE)
        speech = (0.1 * torch.randn(args.batch, samples, generator=generator)).clamp_(-1, 1)
    else:
        frames = int(args.seconds * 100)
        speech = 10.0 + 3.0 * torch.randn(args.batch, frames, FEAT_DIM, generator=generator)
    lengths = torch.full((args.batch,), speech.shape[1], dtype=torch.long)
    return {"speech": speech, "speech_lengths": lengths}


def write_global_mvn_stats(targs: argparse.Namespace, batch: Dict[str, torch.Tensor], work: Path):
    """A ``global_mvn`` statistics file from the generated batch (collect_stats' role)."""
    if targs.normalize != "global_mvn":
        return
    speech = batch["speech"]
    if speech.dim() == 2:  # raw: the model's own frontend computes the features
        from espnet2_birq.features import kaldi_fbank_batch

        speech, _ = kaldi_fbank_batch(speech, batch["speech_lengths"])
    feats = speech.reshape(-1, speech.shape[-1]).double()
    path = work / "feats_stats.npz"
    np.savez(path, count=np.array(feats.shape[0]), sum=feats.sum(0).numpy(),
             sum_square=feats.pow(2).sum(0).numpy())  # fmt: skip
    targs.normalize_conf = dict(targs.normalize_conf or {}, stats_file=str(path))


class TimedBatches:
    """The generated batch ``steps`` times, as a data loader gives it; remembers when each
    was taken (the start of its training step)."""

    def __init__(self, batch: Dict[str, torch.Tensor], steps: int):
        self.batch, self.steps, self.times = batch, steps, []

    def __len__(self):
        return self.steps

    def __iter__(self):
        utt_ids = [f"gen{i:04d}" for i in range(len(self.batch["speech"]))]
        for _ in range(self.steps):
            self.times.append(time.perf_counter())
            yield list(utt_ids), dict(self.batch)


def synchronize(cuda: bool):
    if cuda:
        torch.cuda.synchronize()


def build_training(targs: argparse.Namespace, device: torch.device):
    """Model, optimisers (with the update hooks) and schedulers, as ESPnet's task builds them."""
    from espnet2.tasks.abs_task import scheduler_classes

    torch.backends.cudnn.enabled = targs.cudnn_enabled  # as ESPnet's task sets them
    torch.backends.cudnn.benchmark = targs.cudnn_benchmark
    torch.backends.cudnn.deterministic = targs.cudnn_deterministic
    torch.manual_seed(0)
    model = BirqSSLTask.build_model(targs).to(device=device, dtype=getattr(torch, targs.train_dtype))
    optimizers = BirqSSLTask.build_optimizers(targs, model)
    schedulers = [
        scheduler_classes[targs.scheduler](optimizers[0], **targs.scheduler_conf)
        if targs.scheduler is not None else None
    ]  # fmt: skip
    return model, optimizers, schedulers


def train_steps(model, optimizers, schedulers, targs, batch, steps, distributed_option, cuda):
    """``steps`` update steps through ESPnet's training loop (GuardedTrainer); step start times."""
    from espnet2.train.reporter import Reporter

    scaler = None
    if targs.use_amp:
        from torch.cuda.amp import GradScaler  # what ESPnet's Trainer.run creates

        scaler = GradScaler()
    options = GuardedTrainer.build_options(targs)
    batches = TimedBatches(batch, steps)
    reporter = Reporter()
    reporter.set_epoch(1)
    with reporter.observe("train") as sub:
        GuardedTrainer.train_one_epoch(
            model=model, iterator=batches, optimizers=optimizers, schedulers=schedulers,
            scaler=scaler, reporter=sub, summary_writer=None, options=options,
            distributed_option=distributed_option,
        )  # fmt: skip
    synchronize(cuda)
    return batches.times + [time.perf_counter()]


def count_flops(model, targs, batch, device) -> int:
    """Matrix-product and convolution FLOPs of one forward + backward, as trained."""
    from espnet2.torch_utils.device_funcs import to_device
    from espnet2.train.trainer import autocast, autocast_args
    from torch.utils.flop_counter import FlopCounterMode

    batch = to_device(dict(batch), device)
    with FlopCounterMode(display=False) as counter:
        with autocast(bool(targs.use_amp), **autocast_args):
            loss, _, _ = model(**batch)
        loss.backward()
    model.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def micro_batches(args: argparse.Namespace) -> List[int]:
    """Micro-batches to try, largest first: the whole batch, then halves (``auto``)."""
    if args.micro_batch != "auto":
        return [int(args.micro_batch)]
    sizes, size = [], args.batch
    while size >= 1:
        if args.batch % size == 0:
            sizes.append(size)
        size //= 2
    return sizes


def measure(method: str, args: argparse.Namespace, device: torch.device, work: Path) -> Dict:
    """Update time, throughput, memory and FLOPs of ``method``.

    An update is ``--batch`` utterances; when they do not fit the GPU at once, ESPnet's
    gradient accumulation (``accum_grad``) makes it of smaller micro-batches, as the
    configs say for fewer GPUs: the largest micro-batch that fits is used and reported.
    """
    from espnet2.train.distributed_utils import DistributedOption

    cuda = device.type == "cuda"
    targs = task_args(method, args, work)
    full = generated_batch(args)
    write_global_mvn_stats(targs, full, work)
    result = dict(method=method, config=targs.gpu_check_config, batch=args.batch,
                  seconds=args.seconds, input=args.input,
                  precision="bf16 autocast" if (cuda and targs.use_amp) else "fp32",
                  out_of_memory_at=[])  # fmt: skip
    start = time.perf_counter()
    model, optimizers, schedulers = build_training(targs, device)
    result["params"] = sum(p.numel() for p in model.parameters())
    result["build_s"] = time.perf_counter() - start
    for micro in micro_batches(args):
        accum = args.batch // micro
        targs.accum_grad = accum
        batch = {k: v[:micro] for k, v in full.items()}
        if cuda:
            batch = {k: v.pin_memory() for k, v in batch.items()}
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        try:
            times = train_steps(
                model, optimizers, schedulers, targs, batch, (args.warmup + args.steps) * accum,
                DistributedOption(distributed=False, ngpu=1 if cuda else 0), cuda,
            )  # fmt: skip
        except torch.cuda.OutOfMemoryError:
            result["out_of_memory_at"].append(micro)
            # (outside the handler the traceback, which holds the step's tensors, is gone)
        else:
            break
        model.zero_grad(set_to_none=True)
        gc.collect()
        torch.cuda.empty_cache()
    else:
        result["error"] = ("out of GPU memory at every micro-batch "
                           f"{result['out_of_memory_at']}; try a smaller --batch")  # fmt: skip
        return result
    updates = times[args.warmup * accum :: accum]  # update starts, and the end
    durations = [b - a for a, b in zip(updates[:-1], updates[1:])]
    step = (updates[-1] - updates[0]) / args.steps
    result.update(
        micro_batch=micro, accum_grad=accum,
        step_s=step, step_median_s=statistics.median(durations),
        step_min_s=min(durations), step_max_s=max(durations),
        utt_per_s=args.batch / step, audio_s_per_s=args.batch * args.seconds / step,
    )  # fmt: skip
    if cuda:
        result["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
        result["peak_reserved_gib"] = torch.cuda.max_memory_reserved() / 2**30
    if args.flops == "on":
        result["flops_per_step"] = accum * count_flops(model, targs, batch, device)
        result["tflops_per_s"] = result["flops_per_step"] / step / 1e12
    del model, optimizers, schedulers
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return result


def estimate(result: Dict, args: argparse.Namespace) -> None:
    """GPU-hours of ``--epochs`` epochs of ``--hours`` hours, cost proportional to audio."""
    if "audio_s_per_s" not in result:
        return
    audio = args.hours * 3600.0
    result["gpu_hours"] = args.epochs * audio / result["audio_s_per_s"] / 3600.0


def ddp_smoke(args: argparse.Namespace, out_dir: Path) -> Dict:
    """BiRQ for a few steps in 2 processes (torch.distributed.run); rank 0's result."""
    ddp_dir = out_dir / "ddp"
    ddp_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(Path(__file__).resolve()), "--ddp_worker", "--device", args.device,
           "--birq_config", str(args.birq_config), "--size", args.size, "--input", args.input,
           "--batch", str(args.ddp_batch or max(1, args.batch // 2)), "--micro_batch", "auto",
           "--seconds", str(args.seconds),
           "--steps", "2", "--warmup", "1", "--amp", args.amp, "--out_dir", str(ddp_dir)]  # fmt: skip
    start = time.perf_counter()
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    result = dict(returncode=proc.returncode, wall_s=time.perf_counter() - start)
    path = ddp_dir / "ddp_rank0.json"
    if proc.returncode == 0 and path.exists():
        result.update(json.loads(path.read_text()))
    else:
        result["error"] = (proc.stderr or proc.stdout)[-2000:]
    return result


def ddp_worker(args: argparse.Namespace) -> int:
    """One process of the DDP smoke run (started by torch.distributed.run)."""
    from espnet2.train.distributed_utils import DistributedOption

    cuda = args.device == "cuda"
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    torch.distributed.init_process_group(backend="nccl" if cuda else "gloo")
    try:
        if cuda:
            torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
        work = Path(tempfile.mkdtemp(prefix=f"gpu_check_rank{rank}_"))
        targs = task_args("birq", args, work)
        targs.accum_grad = 1
        batch = generated_batch(args, seed=rank)
        write_global_mvn_stats(targs, generated_batch(args), work)
        model, optimizers, schedulers = build_training(targs, device)
        ddp_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[local_rank] if cuda else None,
            output_device=local_rank if cuda else None,
            find_unused_parameters=targs.unused_parameters,
        )  # fmt: skip
        times = train_steps(
            ddp_model, optimizers, schedulers, targs, batch, args.warmup + args.steps,
            DistributedOption(distributed=True, ngpu=1 if cuda else 0, dist_rank=rank,
                              dist_world_size=world), cuda,
        )  # fmt: skip
        timed = times[args.warmup:]
        step = (timed[-1] - timed[0]) / args.steps
        # every rank must hold the same parameters after the updates
        probe = torch.cat([p.detach().reshape(-1)[:1].float() for p in model.parameters()])
        gathered = [torch.zeros_like(probe) for _ in range(world)]
        torch.distributed.all_gather(gathered, probe)
        if rank == 0:
            (args.out_dir / "ddp_rank0.json").write_text(json.dumps(dict(
                processes=world, batch_per_process=args.batch, steps=args.steps, step_s=step,
                utt_per_s=world * args.batch / step,
                parameters_in_sync=all(torch.equal(g, gathered[0]) for g in gathered),
            )))  # fmt: skip
    finally:
        torch.distributed.destroy_process_group()
    return 0


def fmt(value, spec: str, missing: str = "n/a") -> str:
    return missing if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def report(summary: Dict) -> str:
    """The results as markdown."""
    lines = [
        f"# GPU check: C2 BiRQ and BEST-RQ ({summary['device_name']})",
        "",
        f"- device: {summary['device_name']}; torch {summary['torch']}; "
        f"dense bf16 peak: {fmt(summary['peak_tflops'], '.0f')} TFLOP/s",
        f"- batch: {summary['batch']} utterances x {summary['seconds']:g} s, input "
        f"{summary['input']}, {summary['steps']} timed updates after {summary['warmup']} "
        "untimed, through ESPnet's training loop (GuardedTrainer.train_one_epoch)",
        f"- command: `{summary['command']}`",
        "",
        "| method | params | precision | micro-batch x accum | update s (median) | utt/s "
        "| audio s/s | peak GiB | TFLOP/update | TFLOP/s | share of peak | device-hours for "
        f"{summary['epochs']} epochs x {summary['hours']:g} h |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in summary["methods"]:
        if "error" in r:
            lines.append(f"| {r['method']} | | | | {r['error']} | | | | | | | |")
            continue
        flops = r.get("flops_per_step")
        lines.append(
            f"| {r['method']} | {r['params'] / 1e6:.1f}M | {r['precision']} | "
            f"{r['micro_batch']} x {r['accum_grad']} | "
            f"{r['step_s']:.3f} ({r['step_median_s']:.3f}) | {r['utt_per_s']:.1f} | "
            f"{r['audio_s_per_s']:.0f} | {fmt(r.get('peak_mem_gib'), '.1f')} | "
            f"{fmt(None if flops is None else flops / 1e12, '.3g')} | "
            f"{fmt(r.get('tflops_per_s'), '.3g')} | {fmt(r.get('mfu'), '.1%')} | "
            f"{r['gpu_hours']:,.0f} |"
        )
    lines += ["", f"- BiRQ / BEST-RQ update time: {fmt(summary.get('birq_over_best_rq'), '.3f')}"]
    utts = summary["hours"] * 3600 / summary["avg_utt_s"]
    lines.append(
        f"- {summary['hours']:g} h of audio per epoch = {utts:,.0f} utterances of "
        f"{summary['avg_utt_s']:g} s on average = {utts / summary['batch']:,.0f} updates of "
        f"{summary['batch']}; device-hours assume an update costs in proportion to its seconds of "
        f"audio (measured on {summary['seconds']:g} s utterances: an upper estimate) and "
        "perfect scaling over GPUs (8 GPUs: divide by 8 for the wall time)"
    )
    ddp = summary.get("ddp")
    if ddp is None:
        lines.append(f"- DDP smoke run: not run ({summary['ddp_reason']})")
    elif "error" in ddp:
        lines.append(f"- DDP smoke run (2 processes): FAILED, exit {ddp['returncode']}:\n\n```\n"
                     f"{ddp['error']}\n```")
    else:
        lines.append(
            f"- DDP smoke run (2 processes, BiRQ, {ddp['batch_per_process']} utterances each): "
            f"{ddp['step_s']:.3f} s/step, {ddp['utt_per_s']:.1f} utt/s, parameters in sync: "
            f"{ddp['parameters_in_sync']} ({ddp['wall_s']:.0f} s with start-up)"
        )
    lines.append(f"- wall time of the check (imports included): {summary['wall_s']:.0f} s")
    return "\n".join(lines) + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    if args.ddp_worker:
        return ddp_worker(args)
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        print("no CUDA device; use --device cpu for the toy run", file=sys.stderr)
        return 2
    device = torch.device("cuda" if cuda else "cpu")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    device_name = torch.cuda.get_device_name(device) if cuda else f"CPU ({platform.processor() or platform.machine()})"
    peak = args.peak_tflops if args.peak_tflops is not None else (peak_tflops(device_name) if cuda else None)
    if cuda and peak is None:
        print(f"unknown dense bf16 peak of '{device_name}': pass --peak_tflops for the share "
              "of peak", file=sys.stderr)  # fmt: skip
    summary = dict(
        device_name=device_name, torch=torch.__version__, peak_tflops=peak,
        batch=args.batch, seconds=args.seconds, input=args.input, steps=args.steps,
        warmup=args.warmup, epochs=args.epochs, hours=args.hours, avg_utt_s=args.avg_utt_s,
        command=" ".join([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:])),
        methods=[],
    )  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        for method in args.methods:
            work = Path(tmp) / method
            work.mkdir()
            print(f"measuring {method} ...", file=sys.stderr, flush=True)
            result = measure(method, args, device, work)
            estimate(result, args)
            if peak is not None and "tflops_per_s" in result:
                result["mfu"] = result["tflops_per_s"] / peak
            summary["methods"].append(result)
    by_name = {r["method"]: r for r in summary["methods"]}
    if all(m in by_name and "step_s" in by_name[m] for m in METHODS):
        summary["birq_over_best_rq"] = by_name["birq"]["step_s"] / by_name["best_rq"]["step_s"]
    gpus = torch.cuda.device_count() if cuda else 0
    if args.ddp == "on" or (args.ddp == "auto" and gpus >= 2):
        print("DDP smoke run ...", file=sys.stderr, flush=True)
        if args.ddp_batch is None and "micro_batch" in by_name.get("birq", {}):
            # half the update per process, at most what fitted one GPU at once
            args.ddp_batch = max(1, min(args.batch // 2, by_name["birq"]["micro_batch"]))
        summary["ddp"] = ddp_smoke(args, args.out_dir)
    else:
        summary["ddp_reason"] = "--ddp off" if args.ddp == "off" else f"{gpus} GPU(s), needs 2"
    summary["wall_s"] = time.perf_counter() - START
    text = report(summary)
    (args.out_dir / "gpu_check.json").write_text(json.dumps(summary, indent=2) + "\n")
    (args.out_dir / "gpu_check.md").write_text(text)
    print(text)
    failed = [r["method"] for r in summary["methods"] if "error" in r]
    if "ddp" in summary and "error" in summary["ddp"]:
        failed.append("ddp")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
