#!/usr/bin/env python3
"""Code usage of BiRQ's enhanced labels of a random network: layer norm vs instance norm.

Builds the demo's BiRQ model (`conf/train_ssl_birq_tiny.yaml`, untrained, seeded), runs
its first k blocks on demo pre-training utterances and prints the perplexity and number
of distinct arg-max codes of the enhanced quantiser for ``label_norm: layer`` (layer norm
alone) and ``label_norm: instance`` (per-utterance standardisation, then layer norm).
Run from the demo recipe after stage 2:

    cd egs2/mini_synth/ssl1 && ../../../.venv/bin/python ../../../bench/label_norm_usage.py
"""

import argparse

import kaldiio
import torch

from espnet2_birq.losses.common import code_usage
from espnet2_birq.ssl_model import run_encoder_prefix
from espnet2_birq.tasks.ssl import BirqSSLTask


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="conf/train_ssl_birq_tiny.yaml")
    parser.add_argument("--feats_scp", default="dump/fbank/pretrain/feats.scp")
    parser.add_argument("--cmvn", default="exp/ssl_stats_fbank/train/feats_stats.npz")
    parser.add_argument("--utts", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)

    feats_by_utt = kaldiio.load_scp(args.feats_scp)
    feats = [torch.from_numpy(feats_by_utt[k]) for k in list(feats_by_utt)[: args.utts]]
    lengths = torch.tensor([f.shape[0] for f in feats])
    batch = torch.nn.utils.rnn.pad_sequence(feats, batch_first=True)

    print("| block k | label_norm | perplexity | distinct codes |")
    print("|---|---|---|---|")
    for norm in ("layer", "instance"):
        config = BirqSSLTask.get_parser().parse_args(
            ["--config", args.config, "--input_size", "80",
             "--normalize_conf", f"stats_file={args.cmvn}"]
        )
        config.loss[0]["conf"]["label_norm"] = norm
        torch.manual_seed(args.seed)
        model = BirqSSLTask.build_model(config).eval()
        loss = model.losses[0]
        codes = loss.enhanced_codebook.shape[0]
        for k in range(1, len(model.encoder.encoders)):
            with torch.no_grad():
                normed, normed_lengths = model.normalize(batch.clone(), lengths)
                hidden, hidden_lengths = run_encoder_prefix(
                    model.encoder, normed, normed_lengths, k
                )
                labels = loss.enhanced_labels(hidden, hidden_lengths)
            valid = torch.arange(hidden.shape[1])[None, :] < hidden_lengths[:, None]
            perplexity, distinct = code_usage(labels[valid][:, None], codes)
            print(f"| {k} | {norm} | {perplexity:.1f} | {distinct:.0f} of {codes} |")


if __name__ == "__main__":
    main()
