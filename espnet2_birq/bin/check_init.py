#!/usr/bin/env python3
"""Pre-trained checkpoint name, and a check that fine-tuning really starts from it.

``name``: the file the recipe fine-tunes from, ``valid.<criterion>.ave.pth`` after the first
``best_model_criterion`` of an SSL config (BEST-RQ and BiRQ: ``valid.best_rq_acc.ave.pth``).

``verify``: ESPnet's ``--init_param <ckpt>:encoder:encoder`` silently loads nothing from a
trainer ``checkpoint.pth`` (tensors under ``model``); this loads the checkpoint into the ASR
model of the fine-tuning config as ESPnet does and refuses unless every encoder tensor took.

    python -m espnet2_birq.bin.check_init name exp/ssl_x/config.yaml
    python -m espnet2_birq.bin.check_init verify --ckpt exp/ssl_x/valid.best_rq_acc.ave.pth \\
        --asr_config exp/asr_y/train_asr.yaml --token_list data/token_list/char/tokens.txt
"""

import argparse
import logging
import sys
from pathlib import Path
from typing import List

import yaml


def checkpoint_name(ssl_config: Path) -> str:
    """``valid.<key>.ave.pth`` for the config's first best_model_criterion."""
    config = yaml.safe_load(Path(ssl_config).read_text(encoding="utf-8")) or {}
    phase, key, _ = (config.get("best_model_criterion") or [["valid", "loss", "min"]])[0]
    return f"{phase}.{key}.ave.pth"


def verify(ckpt: Path, asr_config: Path, token_list: Path, extra_args: List[str], task: str = "asr") -> int:
    """Load ``ckpt`` into the ASR model as stage 6 does; returns the number of tensors loaded.

    Raises RuntimeError when an encoder tensor of the ASR model is missing from the
    checkpoint, has another shape, or did not load.
    """
    import torch
    from espnet2.torch_utils.load_pretrained_model import load_pretrained_model

    if task == "bljust":  # BL-JUST configs carry keys ASRTask does not parse
        from espnet2_birq.tasks.bljust import BlJustTask as Task
    else:  # ESPnet's ASR task plus this project's encoder choices (windowed_conformer)
        from espnet2_birq.bin.asr_train import GuardedASRTask as Task

    state = torch.load(ckpt, map_location="cpu")
    if not isinstance(state, dict):
        raise ValueError(f"{ckpt}: not a state dict")
    saved = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
    if not saved:
        hint = (" It is a trainer checkpoint (checkpoint.pth, the model nested under 'model'); pass a model "
                "file such as valid.best_rq_acc.ave.pth or <N>epoch.pth from the same directory."
                if {"model", "optimizers"} <= set(state) else "")
        raise RuntimeError(f"{ckpt} has no 'encoder.*' tensors: --init_param {ckpt}:encoder:encoder "
                           f"would load nothing and fine-tune from scratch.{hint}")
    args = Task.get_parser().parse_args(["--config", str(asr_config), "--token_list", str(token_list), *extra_args])
    model = Task.build_model(args)
    problems = [
        f"encoder.{name} missing from the checkpoint" if name not in saved else
        f"encoder.{name}: checkpoint {tuple(saved[name].shape)}, ASR model {tuple(tensor.shape)}"
        for name, tensor in model.encoder.state_dict().items()
        if name not in saved or saved[name].shape != tensor.shape
    ]
    if problems:
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise RuntimeError(f"{ckpt} does not fit the fine-tuning encoder of {asr_config}:\n  "
                           + "\n  ".join(problems[:20]) + more)
    load_pretrained_model(f"{ckpt}:encoder:encoder", model, ignore_init_mismatch=False)
    loaded = model.encoder.state_dict()
    not_loaded = [name for name, tensor in loaded.items() if not torch.equal(tensor, saved[name])]
    if not_loaded:
        raise RuntimeError(f"ESPnet's init_param did not load {len(not_loaded)} encoder tensors from "
                           f"{ckpt}, e.g. {not_loaded[:5]}")
    return len(loaded)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("name", help="print the checkpoint file name of an SSL config").add_argument(
        "ssl_config", type=Path)
    check = sub.add_parser("verify", help="check that the encoder loads completely")
    check.add_argument("--ckpt", type=Path, required=True)
    check.add_argument("--asr_config", type=Path, required=True)
    check.add_argument("--token_list", type=Path, required=True)
    check.add_argument("--task", choices=("asr", "bljust"), default="asr",
                       help="task that reads --asr_config (bljust: a BL-JUST config)")
    args, extra = parser.parse_known_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s (check_init) %(message)s")
    if args.command == "name":
        return print(checkpoint_name(args.ssl_config))
    try:
        count = verify(args.ckpt, args.asr_config, args.token_list, extra, args.task)
    except (RuntimeError, ValueError, FileNotFoundError) as err:
        sys.exit(f"check_init: {err}")
    logging.info("pre-trained encoder verified: all %d encoder tensors load from %s", count, args.ckpt)


if __name__ == "__main__":
    main()
