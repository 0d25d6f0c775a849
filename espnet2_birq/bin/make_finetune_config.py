#!/usr/bin/env python3
"""Write an ASR fine-tuning config that reuses the pre-trained encoder exactly.

Fine-tuning must build the same encoder as pre-training (else ``--init_param
<ckpt>:encoder:encoder`` fails or, worse, half-loads) and must normalise features the
same way (a different normalisation between pre-training and fine-tuning is a known
pitfall; docs/method.md "Pitfalls the code avoids"). This tool copies ``encoder``, ``encoder_conf``,
``preencoder``, ``preencoder_conf``, ``normalize`` and ``normalize_conf`` from the SSL
experiment's ``config.yaml`` into the ASR config.

The ASR config may still set regularisation keys of ``encoder_conf`` (any key with
``dropout`` in its name, and ``layer_drop_rate``), which often differ between
pre-training and fine-tuning; any other conflicting encoder key is an error.

The sampling rate must agree too. Fine-tuning reads fbank features computed at
``--fs`` (ssl.sh stage 2, in both ``--feats_type`` modes); a model pre-trained on raw
audio records the rate its frontend read in its ``config.yaml``
(``frontend_conf: {fs: ...}``, from ssl.sh's ``--frontend_conf fs=<fs>``). With
``--fs``, a pre-trained model whose frontend read another rate is refused (its mel
bins spanned another band, up to that rate's Nyquist frequency); the generated
config names the rate in its header.

    python -m espnet2_birq.bin.make_finetune_config --fs 16000 \
        --ssl_config exp/ssl_train_ssl_birq_conformer/config.yaml \
        --asr_config conf/train_asr_ctc.yaml --out exp/asr_x/train_asr.yaml
"""

import argparse
import logging
import sys
from pathlib import Path
from typing import Dict, Optional

import yaml

COPIED_KEYS = (
    "encoder",
    "encoder_conf",
    "preencoder",
    "preencoder_conf",
    "normalize",
    "normalize_conf",
)


def is_regularisation_key(key: str) -> bool:
    return "dropout" in key or key == "layer_drop_rate"


#: KaldiFbankFrontend's (and ESPnet's DefaultFrontend's) rate when frontend_conf has no fs
DEFAULT_FRONTEND_FS = 16000


def pretrained_fs(ssl: Dict) -> Optional[int]:
    """The sampling rate a pre-trained model's frontend read, or None when unknown.

    Known only from the ``config.yaml`` of a training run (ESPnet writes every option,
    ``input_size`` included) that computed its features in the model
    (``input_size: null`` and a ``frontend``): a recipe's config file is not a record
    of what was trained, and a model trained on precomputed fbank (``input_size: 80``)
    records no rate.
    """
    if "input_size" not in ssl or ssl["input_size"] is not None or not ssl.get("frontend"):
        return None
    fs = (ssl.get("frontend_conf") or {}).get("fs", DEFAULT_FRONTEND_FS)
    if isinstance(fs, str):  # ESPnet's DefaultFrontend also takes "16k"
        fs = int(float(fs.lower().rstrip("k")) * 1000) if fs.lower().endswith("k") else int(fs)
    return int(fs)


def merge_configs(ssl: Dict, asr: Dict, fs: Optional[int] = None) -> Dict:
    """ASR config with the SSL architecture and normalisation copied in.

    Args:
        ssl: The SSL config (a training run's ``config.yaml``, or a config file).
        asr: The ASR fine-tuning config.
        fs: Sampling rate of the fine-tuning features; checked against the rate
            the pre-trained model's frontend read (:func:`pretrained_fs`).

    Raises:
        ValueError: the ASR config asks for a different encoder or encoder shape,
            or the pre-trained model read audio at another rate than ``fs``.
    """
    trained_fs = pretrained_fs(ssl)
    if fs is not None and trained_fs is not None and trained_fs != fs:
        raise ValueError(
            f"the encoder was pre-trained on features of {trained_fs} Hz audio (frontend_conf fs), "
            f"but the fine-tuning features are at {fs} Hz (--fs): fine-tune with --fs {trained_fs}, "
            f"or pre-train again with --fs {fs}"
        )
    merged = dict(asr)
    if "encoder" not in ssl:
        raise ValueError("the SSL config has no 'encoder' key")
    if "encoder" in asr and asr["encoder"] != ssl["encoder"]:
        raise ValueError(
            f"ASR config asks for encoder '{asr['encoder']}' but the pre-trained "
            f"encoder is '{ssl['encoder']}'"
        )
    encoder_conf = dict(ssl.get("encoder_conf") or {})
    conflicts = []
    for key, value in (asr.get("encoder_conf") or {}).items():
        if is_regularisation_key(key):
            encoder_conf[key] = value
        elif key in encoder_conf and encoder_conf[key] != value:
            conflicts.append(f"{key}: pre-trained {encoder_conf[key]!r}, ASR {value!r}")
        elif key not in encoder_conf:
            conflicts.append(f"{key}: not set in pre-training, ASR {value!r}")
    if conflicts:
        raise ValueError(
            "ASR encoder_conf conflicts with the pre-trained encoder: "
            + "; ".join(conflicts)
        )
    for key in COPIED_KEYS:
        if key in ssl:
            merged[key] = ssl[key]
    merged["encoder_conf"] = encoder_conf
    return merged


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ssl_config", required=True, type=Path)
    parser.add_argument("--asr_config", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--fs", type=int, default=None,
                        help="sampling rate of the fine-tuning features (ssl.sh --fs); a model "
                             "pre-trained on audio at another rate is refused")
    return parser


def main(cmd=None) -> int:
    args = get_parser().parse_args(cmd)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    for path in (args.ssl_config, args.asr_config):
        if not path.is_file():
            logging.error(f"config not found: {path}")
            return 1
    with args.ssl_config.open(encoding="utf-8") as f:
        ssl = yaml.safe_load(f) or {}
    with args.asr_config.open(encoding="utf-8") as f:
        asr = yaml.safe_load(f) or {}
    try:
        merged = merge_configs(ssl, asr, fs=args.fs)
    except ValueError as error:
        logging.error(f"{args.asr_config} vs {args.ssl_config}: {error}")
        return 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(args.out.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        f.write(
            f"# Generated by espnet2_birq.bin.make_finetune_config from\n"
            f"#   {args.asr_config} (training) and {args.ssl_config} (encoder, "
            "normalisation)\n"
        )
        if args.fs is not None:
            f.write(f"# features: fbank of {args.fs} Hz audio (--fs)\n")
        yaml.safe_dump(merged, f, sort_keys=False, default_flow_style=False)
    tmp.replace(args.out)
    logging.info(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
