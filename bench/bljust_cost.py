#!/usr/bin/env python3
"""Cost of one BL-JUST update against one pre-training and one fine-tuning update.

Builds the three models of the mini_synth demo from its configs (same 4-block
Conformer): BiRQ pre-training (``train_ssl_birq_tiny.yaml``), CTC fine-tuning
(``train_asr_ctc_tiny.yaml`` merged with the SSL encoder, as ssl_asr.sh stage 6 does) and
BL-JUST (``train_bljust_tiny.yaml``), and one batch of each kind at the configs' batch
sizes (``batch_bins`` / (frames x 80) utterances of ``--frames`` frames). A step is
forward + backward + gradient clipping + AdamW step. Steps of the kinds are interleaved
(A B C D A B C D ...) so a change of machine load hits all alike; medians are printed.

Kinds: ``pretrain`` (a BiRQ update, warm-up over), ``finetune`` (a CTC update),
``bljust`` (a joint update: CTC on the labelled batch + BiRQ on the unlabelled one),
``bljust_final`` (a final-phase update, labelled batch only). Exploration updates cost
what ``pretrain`` costs minus nothing (they are BiRQ updates of the same model).

    python bench/bljust_cost.py                  # 1 thread, 15 repetitions
    python bench/bljust_cost.py --threads 2 --reps 30
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
CONF = REPO / "egs2" / "mini_synth" / "ssl1" / "conf"

from espnet2.tasks.asr import ASRTask  # noqa: E402

from espnet2_birq.bin.make_finetune_config import merge_configs  # noqa: E402
from espnet2_birq.bljust import JOINT  # noqa: E402
from espnet2_birq.tasks.bljust import BlJustTask  # noqa: E402
from espnet2_birq.tasks.ssl import BirqSSLTask  # noqa: E402

VOCAB = 32


def load(name):
    return yaml.safe_load((CONF / name).read_text())


def batch_size(config, frames, key="batch_bins"):
    return max(1, int(config[key]) // (frames * 80))


def build(workdir: Path):
    stats = workdir / "cmvn.npz"
    x = np.random.default_rng(0).standard_normal((1000, 80))
    np.savez(stats, count=np.array(1000), sum=x.sum(0), sum_square=(x**2).sum(0))
    tokens = workdir / "tokens.txt"
    tokens.write_text(
        "\n".join(["<blank>", "<unk>"] + [f"t{i}" for i in range(VOCAB - 3)] + ["<sos/eos>"])
    )
    norm = ["--normalize", "global_mvn", "--normalize_conf", f"stats_file={stats}"]

    ssl_conf = load("train_ssl_birq_tiny.yaml")
    ssl = BirqSSLTask.build_model(
        BirqSSLTask.get_parser().parse_args(
            ["--config", str(CONF / "train_ssl_birq_tiny.yaml"), "--input_size", "80", *norm]
        )
    )
    asr_conf = merge_configs(ssl_conf, load("train_asr_ctc_tiny.yaml"))
    merged = workdir / "asr.yaml"
    merged.write_text(yaml.safe_dump(asr_conf))
    asr = ASRTask.build_model(
        ASRTask.get_parser().parse_args(
            ["--config", str(merged), "--input_size", "80", "--token_list", str(tokens), *norm]
        )
    )
    bljust_conf = load("train_bljust_tiny.yaml")
    bljust = BlJustTask.build_model(
        BlJustTask.get_parser().parse_args(
            ["--config", str(CONF / "train_bljust_tiny.yaml"), "--input_size", "80",
             "--token_list", str(tokens), *norm]
        )
    )
    # BiRQ past its warm-up (enhanced labels on) in both; BL-JUST in its joint phase.
    for model in (ssl, bljust):
        for module in model.modules():
            if hasattr(module, "bilevel"):
                module.bilevel.num_updates.fill_(10**6)
    schedule = bljust.bljust.schedule
    schedule.start_epoch(2)
    schedule.num_updates.fill_(schedule.exploration_updates + 50)
    assert schedule.phase() == JOINT
    return ssl, ssl_conf, asr, asr_conf, bljust, bljust_conf


def make_batches(ssl_conf, asr_conf, bljust_conf, frames, generator):
    def speech(n):
        return torch.randn(n, frames, 80, generator=generator), torch.full((n,), frames)

    def text(n, length=25):
        return torch.randint(2, VOCAB - 1, (n, length), generator=generator), torch.full(
            (n,), length
        )

    n_ssl = batch_size(ssl_conf, frames)
    n_asr = batch_size(asr_conf, frames)
    n_lab = batch_size(bljust_conf, frames)
    n_unl = batch_size(bljust_conf, frames, "unlabelled_batch_bins")
    return {
        "pretrain": lambda: dict(zip(("speech", "speech_lengths"), speech(n_ssl))),
        "finetune": lambda: dict(
            zip(("speech", "speech_lengths", "text", "text_lengths"), (*speech(n_asr), *text(n_asr)))
        ),
        "bljust": lambda: {
            **dict(zip(("speech", "speech_lengths", "text", "text_lengths"),
                       (*speech(n_lab), *text(n_lab)))),
            **dict(zip(("unlabelled_speech", "unlabelled_speech_lengths"), speech(n_unl))),
            "bljust_epoch": torch.tensor([2]),
        },
        "bljust_final": lambda: dict(
            zip(("speech", "speech_lengths", "text", "text_lengths"), (*speech(n_lab), *text(n_lab)))
        ),
    }, dict(pretrain=n_ssl, finetune=n_asr, bljust=f"{n_lab}+{n_unl}", bljust_final=n_lab)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=2, help="untimed repetitions first")
    parser.add_argument("--frames", type=int, default=200, help="frames per utterance (2 s)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        ssl, ssl_conf, asr, asr_conf, bljust, bljust_conf = build(Path(tmp))
    makers, sizes = make_batches(ssl_conf, asr_conf, bljust_conf, args.frames,
                                 torch.Generator().manual_seed(1))
    models = dict(pretrain=ssl, finetune=asr, bljust=bljust, bljust_final=bljust)
    optimizers = {k: torch.optim.AdamW(m.parameters(), lr=1e-4) for k, m in models.items()}
    final_schedule = bljust.bljust.schedule

    def step(kind):
        model = models[kind]
        model.train()
        batch = makers[kind]()
        if kind == "bljust_final":
            saved = (int(final_schedule.epoch), int(final_schedule.epoch_start_update))
            final_schedule.epoch.fill_(final_schedule.max_epoch)
        start = time.perf_counter()
        optimizers[kind].zero_grad()
        loss, _, _ = model(**batch)
        loss.sum().backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizers[kind].step()
        elapsed = time.perf_counter() - start
        if kind == "bljust_final":
            final_schedule.epoch.fill_(saved[0])
            final_schedule.epoch_start_update.fill_(saved[1])
        return elapsed

    times = {k: [] for k in models}
    for rep in range(args.warmup + args.reps):
        for kind in models:
            elapsed = step(kind)
            if rep >= args.warmup:
                times[kind].append(elapsed)
    med = {k: statistics.median(v) for k, v in times.items()}
    q = {k: np.percentile(v, [25, 75]) for k, v in times.items()}
    print(f"threads={args.threads} reps={args.reps} frames/utt={args.frames}")
    print(f"{'kind':14s} {'batch':>7s} {'median s':>9s} {'q25':>7s} {'q75':>7s}")
    for kind in models:
        print(f"{kind:14s} {str(sizes[kind]):>7s} {med[kind]:9.3f} {q[kind][0]:7.3f} {q[kind][1]:7.3f}")
    both = med["pretrain"] + med["finetune"]
    print(f"bljust / (pretrain + finetune) = {med['bljust'] / both:.2f}")
    print(f"bljust / finetune = {med['bljust'] / med['finetune']:.2f}; "
          f"bljust / pretrain = {med['bljust'] / med['pretrain']:.2f}; "
          f"bljust_final / finetune = {med['bljust_final'] / med['finetune']:.2f}")


if __name__ == "__main__":
    main()
