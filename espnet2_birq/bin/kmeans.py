#!/usr/bin/env python3
"""Offline k-means targets for MT4SSL / HuBERT-style ``kmeans_ce`` pre-training.

One label per *encoder* frame: ``L`` feature frames get ``L // f`` labels, ``f`` the SSL
encoder's subsampling.  Features (``--source``): ``fbank``, CMVN-normalised and stacked ``f``
frames at a time, or ``layer``, the unmasked output of block ``--layer`` of an earlier model
(HuBERT's second iteration; the last label repeated where its convolutions give fewer frames),
of a ``feats.scp`` or (``--input wav``, raw-audio pre-training) a ``wav.scp``.  k-means is
scikit-learn's ``MiniBatchKMeans`` on a seeded sample of at most ``--max_frames`` frames.

    python -m espnet2_birq.bin.kmeans wants conf/train_ssl_mt4ssl_conformer.yaml  # num_clusters, or nothing
    python -m espnet2_birq.bin.kmeans fit --ssl_config C --feats_scp S --cmvn_stats N --out km.pkl \\
        [--source layer --model_config .. --model_file .. --layer 6]
    python -m espnet2_birq.bin.kmeans label --kmeans_model km.pkl --feats_scp S --out labels.1.txt
    python -m espnet2_birq.bin.kmeans check --ssl_config C --labels labels.txt --feats_shape F
"""

import argparse
import logging
import os
import random
import sys
from pathlib import Path
from typing import Dict, Optional

import kaldiio
import numpy as np
import yaml

from espnet2_birq.utils.datadir import DataDirError, read_kaldi_map

SOURCES = ("fbank", "layer")


class LabelError(DataDirError):
    """Labels and features disagree (ids or lengths)."""


def read_config(path: Path) -> Dict:
    return yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}


def kmeans_clusters(config: Dict) -> Optional[int]:
    """``num_clusters`` of the config's ``kmeans_ce`` loss, None without one."""
    for loss in config.get("loss") or []:
        if isinstance(loss, dict) and loss.get("name") == "kmeans_ce":
            return int((loss.get("conf") or {}).get("num_clusters", 500))
    return None


def subsampling_factor(config: Dict) -> int:
    """Input frames per encoder frame of an SSL config (its encoder's input layer)."""
    from espnet2_birq.frame_rate import INPUT_LAYER_FACTORS

    input_layer = (config.get("encoder_conf") or {}).get("input_layer", "conv2d")
    if input_layer not in INPUT_LAYER_FACTORS:
        raise ValueError(f"unknown encoder input_layer {input_layer!r}")
    return INPUT_LAYER_FACTORS[input_layer]


class FeatureSource:
    """Per-encoder-frame feature vectors of one utterance's fbank, ``(L // f, D)``."""

    #: saved with the k-means: the labelling jobs rebuild the same features from them
    SETTINGS = ("factor", "source", "cmvn_stats", "model_config", "model_file", "layer")

    def __init__(self, factor: int, source: str = "fbank", cmvn_stats: Optional[str] = None,
                 model_config: Optional[str] = None, model_file: Optional[str] = None,
                 layer: Optional[int] = None):
        if source not in SOURCES:
            raise ValueError(f"--source must be one of {SOURCES}, got {source!r}")
        self.settings = dict(zip(self.SETTINGS, (factor, source, cmvn_stats, model_config, model_file, layer)))
        self.factor, self.source, self.layer = factor, source, layer
        self.mean = self.std = self.model = None
        if source == "fbank" and cmvn_stats:
            from espnet2.layers.global_mvn import GlobalMVN

            mvn = GlobalMVN(stats_file=cmvn_stats)  # what the models normalise with
            self.mean, self.std = mvn.mean.numpy(), mvn.std.numpy()
        elif source == "layer":
            if not (model_config and model_file and layer is not None):
                raise ValueError("--source layer needs --model_config, --model_file and --layer")
            self.model = self._load_model(model_config, model_file)

    def _load_model(self, model_config: str, model_file: str):
        from espnet2_birq.masking import FrameSubsampling
        from espnet2_birq.tasks.ssl import BirqSSLTask

        model, _ = BirqSSLTask.build_model_from_file(model_config, model_file, "cpu")
        blocks = len(getattr(model.encoder, "encoders", []))
        if not 1 <= self.layer <= blocks:
            raise ValueError(f"--layer {self.layer} outside 1..{blocks} of {model_file}")
        factor = FrameSubsampling.from_encoder(model.encoder).factor
        if factor != self.factor:
            raise ValueError(f"{model_file} subsamples by {factor}, the SSL config by {self.factor}: "
                             "labels from it would not be one per encoder frame")
        return model.eval()

    def __call__(self, feats: np.ndarray) -> np.ndarray:
        groups = feats.shape[0] // self.factor
        x = feats.astype(np.float32)
        if self.model is None:
            if self.mean is not None:
                x = (x - self.mean) / self.std
            return x[: groups * self.factor].reshape(groups, self.factor * x.shape[1])
        import torch

        from espnet2_birq.ssl_model import run_encoder_prefix

        with torch.no_grad():
            x, lengths = torch.from_numpy(x)[None], torch.tensor([feats.shape[0]])
            if self.model.normalize is not None:
                x, lengths = self.model.normalize(x, lengths)
            hidden, hidden_lengths = run_encoder_prefix(self.model.encoder, x, lengths, self.layer)
        out = hidden[0, : int(hidden_lengths[0])].numpy().astype(np.float32)
        if 0 < out.shape[0] < groups:  # the convolution edges drop the last group(s)
            out = np.concatenate([out, np.repeat(out[-1:], groups - out.shape[0], 0)])
        return out[:groups]


class InputReader:
    """Fbank frames of one ``scp`` entry: a feature matrix (``feats``) or audio (``wav``),
    the latter through the project's fbank, exactly as the in-model frontend computes it."""

    def __init__(self, kind: str = "feats", fs: int = 16000):
        if kind not in ("feats", "wav"):
            raise ValueError(f"input kind must be feats or wav, got {kind!r}")
        self.kind, self.fs = kind, fs

    def __call__(self, uid: str, spec: str) -> np.ndarray:
        if self.kind == "feats":
            return np.asarray(kaldiio.load_mat(spec.strip()))
        import torch

        from espnet2_birq.bin.extract_fbank import BadAudioError, read_audio
        from espnet2_birq.features import kaldi_fbank

        try:
            data, rate, _ = read_audio(spec)
        except BadAudioError as err:
            raise ValueError(f"utterance {uid}: {err}") from err
        if rate != self.fs or data.shape[1] != 1:
            raise ValueError(f"utterance {uid}: {data.shape[1]} channel(s) at {rate} Hz, "
                             f"expected 1 at {self.fs} Hz")
        return kaldi_fbank(torch.from_numpy(np.ascontiguousarray(data[:, 0])), rate,
                           expected_sample_rate=self.fs).numpy()


def fit(feats_scp: str, source: FeatureSource, num_clusters: int, out: str, sample_utts: int = 5000,
        max_frames: int = 1_000_000, seed: int = 0, n_init: int = 3,
        reader: Optional[InputReader] = None) -> Dict:
    """Fit MiniBatchKMeans on a seeded sample of ``feats_scp``; save it (joblib) with the feature settings."""
    import joblib
    from sklearn.cluster import MiniBatchKMeans

    reader = reader or InputReader()
    entries = read_kaldi_map(feats_scp, key_name="utterance id")
    chosen = sorted(random.Random(seed).sample(entries, min(sample_utts, len(entries))))
    vectors, total = [], 0
    for uid, spec in chosen:
        if total >= max_frames:
            break
        vectors.append(source(reader(uid, spec))[: max_frames - total])
        total += vectors[-1].shape[0]
    if total < num_clusters:
        raise ValueError(f"{feats_scp}: {total} frames in the sample, fewer than num_clusters="
                         f"{num_clusters}; use more utterances (--sample_utts)")
    data = np.concatenate(vectors)
    logging.info("fitting %d clusters on %d frames (dim %d) from %d utterances",
                 num_clusters, data.shape[0], data.shape[1], len(vectors))
    kmeans = MiniBatchKMeans(n_clusters=num_clusters, batch_size=10000, max_iter=100, n_init=n_init, tol=0.0,
                             max_no_improvement=100, reassignment_ratio=0.0, random_state=seed).fit(data)
    logging.info("mean squared distance to the centroid: %.4f", -kmeans.score(data) / data.shape[0])
    state = {"kmeans": kmeans, "num_clusters": num_clusters, **source.settings}
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    joblib.dump(state, f"{out}.tmp{os.getpid()}")
    os.replace(f"{out}.tmp{os.getpid()}", out)
    return state


def label(feats_scp: str, source: FeatureSource, kmeans, out: str, reader: Optional[InputReader] = None) -> int:
    """Write ``uid l_0 ... l_{L//f-1}`` for every utterance of ``feats_scp``; returns their number."""
    reader = reader or InputReader()
    entries = read_kaldi_map(feats_scp, key_name="utterance id")
    with open(f"{out}.tmp{os.getpid()}", "w", encoding="utf-8") as f:
        for uid, spec in entries:
            frames = source(reader(uid, spec))
            f.write(" ".join([uid, *map(str, kmeans.predict(frames) if frames.shape[0] else [])]) + "\n")
    os.replace(f"{out}.tmp{os.getpid()}", out)
    return len(entries)


def check_labels(labels: str, feats_shape: str, factor: int, samples_fs: Optional[int] = None) -> int:
    """Refuse labels whose ids or counts differ from the features' ``L // factor``.

    ``feats_shape``: an ESPnet shape file; with ``samples_fs`` its lengths are samples at that
    rate (raw audio), made from durations rounded to 1 ms, so a count one label off passes
    (the loss refuses any batch whose labels are short of its frames).
    """
    from espnet2_birq.features import num_frames

    tolerance = 1 if samples_fs else 0
    lengths = {uid: int(shape.split(",")[0]) for uid, shape in read_kaldi_map(feats_shape, key_name="utterance id")}
    expected = {uid: (num_frames(n, samples_fs) if samples_fs else n) // factor for uid, n in lengths.items()}
    # strictly read: a duplicate id or a blank line is an error naming the line
    labelled = read_kaldi_map(labels, min_fields=1, key_name="utterance id")
    for number, (uid, values) in enumerate(labelled, 1):
        where, count = f"{labels}:{number}: utterance {uid}", len(values.split())
        if uid not in expected:
            raise LabelError(f"{where} has labels but no features in {feats_shape}")
        if abs(count - expected[uid]) > tolerance:
            raise LabelError(f"{where} has {count} labels but its features give {expected[uid]} encoder "
                             f"frames (frames // {factor}, {feats_shape}); the labels were made for other features")
    missing = sorted(set(expected) - {uid for uid, _ in labelled})
    if missing:
        raise LabelError(f"{labels}: no labels for {len(missing)} utterances of {feats_shape}, e.g. {missing[0]}")
    return len(labelled)


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("wants", help="print num_clusters of the kmeans_ce loss").add_argument("ssl_config", type=Path)
    p_fit = sub.add_parser("fit", help="fit k-means on a sample")
    p_label = sub.add_parser("label", help="label every utterance of a scp")
    p_label.add_argument("--kmeans_model", required=True)
    for p in (p_fit, p_label):
        p.add_argument("--feats_scp", required=True, help="feature scp, or wav.scp with --input wav")
        p.add_argument("--input", choices=("feats", "wav"), default="feats")
        p.add_argument("--fs", type=int, default=16000, help="sampling rate (--input wav)")
        p.add_argument("--out", required=True)
    p_fit.add_argument("--ssl_config", type=Path, required=True)
    p_fit.add_argument("--num_clusters", type=int, default=None, help="default: the kmeans_ce loss' num_clusters")
    for option, default in (("--sample_utts", 5000), ("--max_frames", 1_000_000), ("--seed", 0), ("--n_init", 3)):
        p_fit.add_argument(option, type=int, default=default)
    p_fit.add_argument("--source", choices=SOURCES, default="fbank")
    p_fit.add_argument("--cmvn_stats", default=None, help="global CMVN npz (fbank)")
    for option in ("--model_config", "--model_file"):
        p_fit.add_argument(option, default=None, help="earlier model (layer)")
    p_fit.add_argument("--layer", type=int, default=None, help="block of it (layer)")
    p_check = sub.add_parser("check", help="labels agree with the features")
    p_check.add_argument("--ssl_config", type=Path, required=True)
    p_check.add_argument("--labels", required=True)
    p_check.add_argument("--feats_shape", required=True)
    p_check.add_argument("--samples_fs", type=int, default=None,
                         help="the shape file counts samples at this rate (raw audio)")
    return parser


def main(argv=None) -> None:
    args = get_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s (kmeans) %(message)s")
    try:
        if args.command == "wants":
            clusters = kmeans_clusters(read_config(args.ssl_config))
            if clusters is not None:
                print(clusters)
        elif args.command == "fit":
            config = read_config(args.ssl_config)
            clusters = args.num_clusters or kmeans_clusters(config)
            if clusters is None:
                raise ValueError(f"{args.ssl_config} has no kmeans_ce loss; give --num_clusters")
            source = FeatureSource(subsampling_factor(config), args.source, args.cmvn_stats,
                                   args.model_config, args.model_file, args.layer)
            fit(args.feats_scp, source, clusters, args.out, args.sample_utts, args.max_frames, args.seed,
                args.n_init, InputReader(args.input, args.fs))
        elif args.command == "label":
            import joblib

            state = joblib.load(args.kmeans_model)
            source = FeatureSource(**{k: state[k] for k in FeatureSource.SETTINGS})
            n = label(args.feats_scp, source, state["kmeans"], args.out, InputReader(args.input, args.fs))
            logging.info("%d utterances labelled -> %s", n, args.out)
        else:
            factor = subsampling_factor(read_config(args.ssl_config))
            n = check_labels(args.labels, args.feats_shape, factor, args.samples_fs)
            logging.info("%s: %d utterances, one label per encoder frame", args.labels, n)
    except (ValueError, FileNotFoundError, KeyError) as err:  # DataDirError and LabelError are ValueErrors
        sys.exit(f"kmeans: {err}")


if __name__ == "__main__":
    main()
