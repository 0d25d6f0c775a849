#!/usr/bin/env python3
"""Upload a model packed by ``espnet2.bin.pack`` (ssl.sh stage 9) to the Hugging Face Hub.

    python -m espnet2_birq.bin.hf_upload --archive exp/asr_x/asr_x_valid.cer_ctc.ave.zip \\
        --repo_id user/birq_asr --task asr --results exp/asr_x/RESULTS.md

The archive is unzipped as it is (``meta.yaml`` and the paths relative to the
recipe directory, the layout ESPnet's own ``asr.sh`` uploads and
``espnet_model_zoo`` downloads), a model card ``README.md`` is added (the
ESPnet tags, how to load the model, ``RESULTS.md`` when given) and the folder is
uploaded with ``huggingface_hub``'s ``HfApi.create_repo`` and
``HfApi.upload_folder``.  ``huggingface_hub`` is imported only here, when
uploading (``pip install huggingface_hub``; log in with ``huggingface-cli
login`` or set ``HF_TOKEN``).
"""

import argparse
import logging
import os
import sys
import tempfile
import zipfile
from typing import Optional, Sequence

import yaml

logger = logging.getLogger("espnet2_birq.hf_upload")

_USAGE = {
    "asr": """```python
from espnet2.bin.asr_inference import Speech2Text
from espnet2_birq.features import kaldi_fbank

# after unpacking (espnet2.main_funcs.pack_funcs.unpack) or snapshot_download:
speech2text = Speech2Text(asr_train_config=..., asr_model_file=...)
# the model takes 80-dim Kaldi fbank of 16 kHz audio (a float tensor in [-1, 1]), as in training:
text = speech2text(kaldi_fbank(waveform, 16000))[0][0]
```""",
    "ssl": """```python
from espnet2_birq.tasks.ssl import BirqSSLTask

model, train_args = BirqSSLTask.build_model_from_file(ssl_train_config, ssl_model_file)
encoder = model.encoder  # or fine-tune: ssl.sh --pretrained <ssl_model_file>
```""",
}


def model_card(meta: dict, task: str, repo_id: str, results: Optional[str]) -> str:
    """``README.md`` for the Hub repository."""
    files = dict(meta.get("yaml_files", {}), **meta.get("files", {}))
    lines = [
        "---",
        "tags:",
        "- espnet",
        "- audio",
        "- automatic-speech-recognition" if task == "asr" else "- self-supervised-learning",
        "- espnet2-birq",
        "library_name: espnet",
        "license: cc-by-4.0",
        "---",
        "",
        f"## {repo_id}",
        "",
        "An ESPnet2 model trained with espnet2-birq "
        + ("(CTC fine-tuning of a BEST-RQ/BiRQ pre-trained encoder)." if task == "asr"
           else "(BEST-RQ/BiRQ self-supervised pre-training)."),
        "",
        "Files (ESPnet `meta.yaml`):",
        "",
        *[f"- `{key}`: `{path}`" for key, path in files.items()],
        "",
        f"Packed with espnet {meta.get('espnet', '?')}, torch {meta.get('torch', '?')}.",
        "",
        _USAGE[task],
        "",
    ]
    if results:
        with open(results, encoding="utf-8") as f:
            lines += ["## Results", "", f.read()]
    return "\n".join(lines)


def stage_folder(archive: str, folder: str, task: str, repo_id: str,
                 results: Optional[str]) -> None:
    """Unzip ``archive`` into ``folder`` and write the model card."""
    if not zipfile.is_zipfile(archive):
        raise ValueError(f"{archive}: not a zip archive (pack it with ssl.sh stage 9)")
    with zipfile.ZipFile(archive) as z:
        names = z.namelist()
        if "meta.yaml" not in names:
            raise ValueError(f"{archive}: no meta.yaml (not made by espnet2.bin.pack)")
        z.extractall(folder)
    with open(os.path.join(folder, "meta.yaml"), encoding="utf-8") as f:
        meta = yaml.safe_load(f)
    with open(os.path.join(folder, "README.md"), "w", encoding="utf-8") as f:
        f.write(model_card(meta, task, repo_id, results))


def upload(archive: str, repo_id: str, task: str, results: Optional[str] = None,
           private: bool = False) -> str:
    """Upload ``archive`` to ``repo_id``; returns the commit URL huggingface_hub gives."""
    try:
        from huggingface_hub import HfApi
    except ImportError as e:
        raise SystemExit(
            "uploading needs huggingface_hub: pip install huggingface_hub "
            f"(or pip install 'espnet2-birq[hf]'); {e}"
        )
    api = HfApi()
    with tempfile.TemporaryDirectory() as folder:
        stage_folder(archive, folder, task, repo_id, results)
        api.create_repo(repo_id=repo_id, repo_type="model", private=private, exist_ok=True)
        info = api.upload_folder(
            repo_id=repo_id,
            repo_type="model",
            folder_path=folder,
            commit_message=f"Upload {os.path.basename(archive)} (espnet2-birq)",
        )
    logger.info("uploaded %s to %s: %s", archive, repo_id, info)
    return str(info)


def main(argv: Optional[Sequence[str]] = None) -> int:
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s (%(module)s:%(lineno)d) %(levelname)s: %(message)s",
    )
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--archive", required=True, help="zip from espnet2.bin.pack")
    p.add_argument("--repo_id", required=True, help="e.g. user/birq_asr")
    p.add_argument("--task", choices=["asr", "ssl"], required=True)
    p.add_argument("--results", default=None, help="RESULTS.md for the model card")
    p.add_argument("--private", action="store_true")
    args = p.parse_args(argv)
    if not os.path.isfile(args.archive):
        logger.error("%s: not found (run ssl.sh --stage 9 first)", args.archive)
        return 1
    if args.results is not None and not os.path.isfile(args.results):
        logger.error("%s: not found (run ssl.sh --stage 8 first)", args.results)
        return 1
    try:
        upload(args.archive, args.repo_id, args.task, args.results, args.private)
    except ValueError as e:
        logger.error("%s", e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
