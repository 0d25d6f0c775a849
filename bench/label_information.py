#!/usr/bin/env python3
"""How much each pre-training target tells about the character being spoken.

BiRQ is meant to beat BEST-RQ because its enhanced labels (codes of an intermediate
block of the model itself) carry more about speech than BEST-RQ's random-projection codes
of the fbank. This measures that on labelled data, with characters standing in for
phones: a fine-tuned CTC model's best path marks the frames where it emits a character
(blank frames are left out), and each such frame pairs that character with the targets
of the same encoder frame:

- ``anchor``: BEST-RQ's code of the stacked, normalised fbank (the anchoring labels of
  BEST-RQ and BiRQ alike: the quantiser of the BiRQ model given);
- ``enhanced``: BiRQ's enhanced label (arg-max code of block k's normalised output on
  the unmasked input) of the pre-trained BiRQ model, and of the same architecture
  untrained (``enhanced, untrained``: what pre-training changed);
- ``k-means``: MT4SSL's offline cluster id, from the ``kmeans.pkl`` of a recipe (optional).

Per target: the classes used, the mutual information with the character in bits, the
same after shuffling the characters over the frames (the estimate's bias with that many
classes: only the difference means something), and the purity (the share of frames whose
character is the most frequent one of their class). Run from a recipe directory after a
fine-tuning (stage 6); e.g. in a ``bench/compare_methods.py`` work directory::

    python bench/label_information.py --birq_exp exp/ssl_birq_seed0 \\
        --asr_exp exp/train400/asr_scratch_seed0 --kmeans dump/kmeans/fbank_50/kmeans.pkl \\
        --sets train dev

scikit-learn computes the mutual information (``mutual_info_score``); the pairing and
the purity are a few lines here because they need the recipe's models.
"""

import argparse
import math
from pathlib import Path
from typing import Dict, List

import kaldiio
import numpy as np
import torch


def ctc_character_frames(asr_model, feats: np.ndarray) -> np.ndarray:
    """(T_out,) best-path token per encoder frame of a CTC model (blank included)."""
    speech = torch.from_numpy(feats.astype(np.float32))[None]
    encoded, encoded_lengths = asr_model.encode(speech, torch.tensor([feats.shape[0]]))
    return asr_model.ctc.argmax(encoded)[0, : int(encoded_lengths[0])].numpy()


def birq_targets(model, feats: np.ndarray) -> Dict[str, np.ndarray]:
    """(T,) anchoring code and enhanced label per encoder frame of a BiRQ model."""
    from espnet2_birq.ssl_model import run_encoder_prefix

    loss = model.losses[0]
    x = torch.from_numpy(feats.astype(np.float32))[None]
    lengths = torch.tensor([feats.shape[0]])
    normed, normed_lengths = model.normalize(x, lengths)
    codes, code_lengths = loss.anchor.quantizer(normed, normed_lengths)
    hidden, hidden_lengths = run_encoder_prefix(model.encoder, normed, normed_lengths, loss.label_layer)
    enhanced = loss.enhanced_labels(hidden, hidden_lengths)
    return dict(anchor=codes[0, : int(code_lengths[0]), 0].numpy(),
                enhanced=enhanced[0, : int(hidden_lengths[0])].numpy())


def information(classes: np.ndarray, chars: np.ndarray, rng: np.random.Generator) -> Dict[str, float]:
    from sklearn.metrics import mutual_info_score
    from sklearn.metrics.cluster import contingency_matrix

    bits = mutual_info_score(chars, classes) / math.log(2)
    shuffled = mutual_info_score(rng.permutation(chars), classes) / math.log(2)
    table = contingency_matrix(classes, chars)
    return dict(classes=int(len(np.unique(classes))), mi=bits, mi_shuffled=shuffled,
                purity=float(table.max(axis=1).sum() / table.sum()))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--birq_exp", type=Path, required=True, help="pre-trained BiRQ experiment directory")
    parser.add_argument("--birq_model", default="valid.best_rq_acc.ave.pth")
    parser.add_argument("--asr_exp", type=Path, required=True, help="fine-tuned CTC model: the character frames")
    parser.add_argument("--asr_model", default="valid.cer_ctc.ave.pth")
    parser.add_argument("--kmeans", type=Path, default=None, help="kmeans.pkl of an MT4SSL recipe run (optional)")
    parser.add_argument("--sets", nargs="+", default=["dev"], help="labelled sets under --dump (default: dev)")
    parser.add_argument("--dump", type=Path, default=Path("dump/fbank"))
    parser.add_argument("--seed", type=int, default=0, help="the untrained model's and the shuffle's seed")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    from espnet2.tasks.asr import ASRTask

    from espnet2_birq.tasks.ssl import BirqSSLTask

    asr_model, _ = ASRTask.build_model_from_file(
        str(args.asr_exp / "config.yaml"), str(args.asr_exp / args.asr_model), "cpu")
    birq, birq_args = BirqSSLTask.build_model_from_file(
        str(args.birq_exp / "config.yaml"), str(args.birq_exp / args.birq_model), "cpu")
    torch.manual_seed(args.seed)
    untrained = BirqSSLTask.build_model(birq_args)
    # the untrained model keeps the trained one's quantisers (the same labels' definition)
    untrained.losses[0].load_state_dict(birq.losses[0].state_dict())
    for model in (asr_model, birq, untrained):
        model.eval()
    kmeans = source = None
    if args.kmeans is not None:
        import joblib

        from espnet2_birq.bin.kmeans import FeatureSource

        state = joblib.load(args.kmeans)
        source = FeatureSource(state["factor"], state["source"], state["cmvn_stats"],
                               state["model_config"], state["model_file"], state["layer"])
        kmeans = state["kmeans"]

    columns: Dict[str, List[np.ndarray]] = {}
    frames = utterances = 0
    with torch.no_grad():
        for dset in args.sets:
            for uid, feats in kaldiio.load_scp_sequential(str(args.dump / dset / "feats.scp")):
                chars = ctc_character_frames(asr_model, feats)
                targets = birq_targets(birq, feats)
                targets["enhanced, untrained"] = birq_targets(untrained, feats)["enhanced"]
                if kmeans is not None:
                    targets["k-means"] = kmeans.predict(source(feats))
                # encoder frame i of every target covers input frames [4i, 4i + 4); the
                # convolutional front end may drop the last one or two
                n = min(len(chars), *(len(t) for t in targets.values()))
                keep = chars[:n] != asr_model.blank_id
                columns.setdefault("char", []).append(chars[:n][keep])
                for name, values in targets.items():
                    columns.setdefault(name, []).append(np.asarray(values)[:n][keep])
                frames += int(keep.sum())
                utterances += 1
    if frames == 0:
        raise SystemExit(f"{args.asr_exp / args.asr_model} emits no character on {' '.join(args.sets)} "
                         "(only blanks): nothing to pair the targets with; use a better-trained CTC model")
    data = {name: np.concatenate(parts) for name, parts in columns.items()}
    rng = np.random.default_rng(args.seed)
    print(f"{frames} character frames of {utterances} utterances ({' '.join(args.sets)}); "
          f"{len(np.unique(data['char']))} characters; BiRQ label layer {birq.losses[0].label_layer}")
    print("| target | classes used | MI with the character (bits) | MI, characters shuffled | MI above shuffled | purity |")
    print("|---|---|---|---|---|---|")
    for name in ("anchor", "enhanced", "enhanced, untrained", "k-means"):
        if name not in data:
            continue
        info = information(data[name], data["char"], rng)
        print(f"| {name} | {info['classes']} | {info['mi']:.3f} | {info['mi_shuffled']:.3f} "
              f"| {info['mi'] - info['mi_shuffled']:.3f} | {info['purity']:.3f} |")
    from sklearn.metrics import mutual_info_score

    both = mutual_info_score(data["anchor"], data["enhanced"]) / math.log(2)
    print(f"\nMI between the anchoring and the enhanced labels: {both:.3f} bits")


if __name__ == "__main__":
    main()
