#!/usr/bin/env python3
"""Pre-trained checkpoint name and a check that fine-tuning really starts from it.

``name``: the file the recipe fine-tunes from, ``valid.<criterion>.ave.pth`` after the
first ``best_model_criterion`` of an SSL config (BEST-RQ and BiRQ configs select by the
anchoring accuracy, ``valid.best_rq_acc.ave.pth``).

``verify``: ESPnet's ``--init_param <ckpt>:encoder:encoder`` loads the tensors whose
names start with ``encoder.`` and says nothing when there are none (a trainer
``checkpoint.pth`` nests them under ``model``, so passing it fine-tunes from scratch
without a word). This builds the ASR model of the fine-tuning config, loads the
checkpoint with ESPnet's own ``load_pretrained_model`` and refuses unless every encoder
tensor of the ASR model now equals the checkpoint's, with the same shape.

    python -m espnet2_birq.bin.check_init name exp/ssl_x/config.yaml
    python -m espnet2_birq.bin.check_init verify --ckpt exp/ssl_x/valid.best_rq_acc.ave.pth \
        --asr_config exp/asr_y/train_asr.yaml --token_list data/token_list/char/tokens.txt
"""

import argparse
import logging
import sys
from pathlib import Path
from typing import Dict, List

import yaml


def checkpoint_name(ssl_config: Path) -> str:
    """``valid.<key>.ave.pth`` for the config's first best_model_criterion."""
    with open(ssl_config, encoding="utf-8") as f:
        config = yaml.safe_load(f) or {}
    criteria = config.get("best_model_criterion") or [["valid", "loss", "min"]]
    phase, key, _ = criteria[0]
    return f"{phase}.{key}.ave.pth"


def load_state(ckpt: Path) -> Dict:
    import torch

    state = torch.load(ckpt, map_location="cpu")
    if not isinstance(state, dict):
        raise ValueError(f"{ckpt}: not a state dict")
    return state


def verify(
    ckpt: Path,
    asr_config: Path,
    token_list: Path,
    extra_args: List[str],
    task: str = "asr",
) -> int:
    """Load ``ckpt`` into the ASR model as stage 6 does; return the tensors loaded.

    Raises:
        RuntimeError: an encoder tensor of the ASR model is missing from the
            checkpoint, has another shape, or did not load.
    """
    import torch
    # ESPnet's ASR task plus this project's encoder choices (windowed_conformer)
    from espnet2_birq.bin.asr_train import GuardedASRTask as ASRTask
    from espnet2.torch_utils.load_pretrained_model import load_pretrained_model

    state = load_state(ckpt)
    encoder_state = {k: v for k, v in state.items() if k.startswith("encoder.")}
    if not encoder_state:
        hint = ""
        if {"model", "optimizers"} <= set(state):
            hint = (
                " It is a trainer checkpoint (checkpoint.pth, the model nested under "
                "'model'); pass a model file such as valid.best_rq_acc.ave.pth or "
                "<N>epoch.pth from the same directory."
            )
        raise RuntimeError(
            f"{ckpt} has no 'encoder.*' tensors: --init_param {ckpt}:encoder:encoder "
            f"would load nothing and fine-tune from scratch.{hint}"
        )
    if task == "bljust":  # BL-JUST configs carry keys ASRTask does not parse
        from espnet2_birq.tasks.bljust import BlJustTask as ASRTask
    args = ASRTask.get_parser().parse_args(
        ["--config", str(asr_config), "--token_list", str(token_list), *extra_args]
    )
    model = ASRTask.build_model(args)
    model_state = model.encoder.state_dict()
    problems = []
    for name, tensor in model_state.items():
        saved = encoder_state.get(f"encoder.{name}")
        if saved is None:
            problems.append(f"encoder.{name} missing from the checkpoint")
        elif saved.shape != tensor.shape:
            problems.append(
                f"encoder.{name}: checkpoint {tuple(saved.shape)}, "
                f"ASR model {tuple(tensor.shape)}"
            )
    if problems:
        raise RuntimeError(
            f"{ckpt} does not fit the fine-tuning encoder of {asr_config}:\n  "
            + "\n  ".join(problems[:20])
            + (f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else "")
        )
    load_pretrained_model(f"{ckpt}:encoder:encoder", model, ignore_init_mismatch=False)
    not_loaded = [
        name
        for name, tensor in model.encoder.state_dict().items()
        if not torch.equal(tensor, encoder_state[f"encoder.{name}"])
    ]
    if not_loaded:
        raise RuntimeError(
            f"ESPnet's init_param did not load {len(not_loaded)} encoder tensors from "
            f"{ckpt}, e.g. {not_loaded[:5]}"
        )
    return len(model_state)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    name = sub.add_parser("name", help="print the checkpoint file name of an SSL config")
    name.add_argument("ssl_config", type=Path)
    check = sub.add_parser("verify", help="check that the encoder loads completely")
    check.add_argument("--ckpt", type=Path, required=True)
    check.add_argument("--asr_config", type=Path, required=True)
    check.add_argument("--token_list", type=Path, required=True)
    check.add_argument(
        "--task", choices=("asr", "bljust"), default="asr",
        help="task that reads --asr_config (bljust: a BL-JUST config)",
    )
    args, extra = parser.parse_known_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s (check_init) %(message)s")
    if args.command == "name":
        print(checkpoint_name(args.ssl_config))
        return
    try:
        count = verify(args.ckpt, args.asr_config, args.token_list, extra, args.task)
    except (RuntimeError, ValueError, FileNotFoundError) as err:
        sys.exit(f"check_init: {err}")
    logging.info(
        "pre-trained encoder verified: all %d encoder tensors load from %s",
        count,
        args.ckpt,
    )


if __name__ == "__main__":
    main()
