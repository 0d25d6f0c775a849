#!/usr/bin/env python3
"""Upload a model packed by ``espnet2.bin.pack`` (ssl_asr.sh stage 9) to the Hugging Face Hub.

    python -m espnet2_birq.bin.hf_upload --archive exp/asr_x/asr_x_valid.cer_ctc.ave.zip \\
        --repo_id user/birq_asr --task asr --results exp/asr_x/RESULTS.md

The archive is unzipped as it is (``meta.yaml`` and recipe-relative paths, the layout
ESPnet's ``asr.sh`` uploads and ``espnet_model_zoo`` downloads), a model card ``README.md``
is added and the folder goes up with ``huggingface_hub`` (imported only when uploading;
log in with ``huggingface-cli login`` or set ``HF_TOKEN``).
"""

import argparse
import logging
import os
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Optional, Sequence

import yaml

USAGE = {  # the ASR model reads 80-dim Kaldi fbank, as in training
    "asr": "from espnet2.bin.asr_inference import Speech2Text\nfrom espnet2_birq.features import kaldi_fbank\n"
           "text = Speech2Text(asr_train_config, asr_model_file)(kaldi_fbank(waveform_16k, 16000))[0][0]",
    "ssl": "from espnet2_birq.tasks.ssl import BirqSSLTask\n"
           "encoder = BirqSSLTask.build_model_from_file(ssl_train_config, ssl_model_file)[0].encoder",
}


def model_card(meta: dict, task: str, repo_id: str, results: Optional[str]) -> str:
    """``README.md`` of the Hub repository: ESPnet's tags, the files, how to load the model."""
    files = dict(meta.get("yaml_files", {}), **meta.get("files", {}))
    tag = "automatic-speech-recognition" if task == "asr" else "self-supervised-learning"
    card = (f"---\ntags:\n- espnet\n- audio\n- {tag}\n- espnet2-birq\nlibrary_name: espnet\nlicense: cc-by-4.0\n"
            f"---\n\n## {repo_id}\n\nAn ESPnet2 model trained with espnet2-birq ({task}).\n\n"
            + "".join(f"- `{key}`: `{path}`\n" for key, path in files.items())
            + f"\nPacked with espnet {meta.get('espnet', '?')}, torch {meta.get('torch', '?')}.\n\n"
            f"```python\n{USAGE[task]}\n```\n")
    return card + ("\n## Results\n\n" + Path(results).read_text(encoding="utf-8") if results else "")


def stage_folder(archive: str, folder: str, task: str, repo_id: str, results: Optional[str]) -> None:
    """Unzip ``archive`` into ``folder`` and write the model card."""
    if not zipfile.is_zipfile(archive):
        raise ValueError(f"{archive}: not a zip archive (pack it with ssl_asr.sh stage 9)")
    with zipfile.ZipFile(archive) as z:
        if "meta.yaml" not in z.namelist():
            raise ValueError(f"{archive}: no meta.yaml (not made by espnet2.bin.pack)")
        z.extractall(folder)
        meta = yaml.safe_load(z.read("meta.yaml"))
    Path(folder, "README.md").write_text(model_card(meta, task, repo_id, results), encoding="utf-8")


def main(argv: Optional[Sequence[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s (hf_upload) %(levelname)s: %(message)s")
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--archive", required=True, help="zip from espnet2.bin.pack")
    p.add_argument("--repo_id", required=True, help="e.g. user/birq_asr")
    p.add_argument("--task", choices=["asr", "ssl"], required=True)
    p.add_argument("--results", default=None, help="RESULTS.md for the model card")
    args = p.parse_args(argv)
    for path, stage in ((args.archive, 9), (args.results, 8)):
        if path is not None and not os.path.isfile(path):
            logging.error("%s: not found (run ssl_asr.sh --stage %d first)", path, stage)
            return 1
    try:
        from huggingface_hub import HfApi
    except ImportError as e:
        sys.exit(f"uploading needs huggingface_hub: pip install 'espnet2-birq[hf]' ({e})")

    with tempfile.TemporaryDirectory() as folder:
        try:
            stage_folder(args.archive, folder, args.task, args.repo_id, args.results)
        except ValueError as e:
            logging.error("%s", e)
            return 1
        api = HfApi()
        api.create_repo(repo_id=args.repo_id, repo_type="model", exist_ok=True)
        info = api.upload_folder(repo_id=args.repo_id, repo_type="model", folder_path=folder,
                                 commit_message=f"Upload {os.path.basename(args.archive)} (espnet2-birq)")
    logging.info("uploaded %s to %s: %s", args.archive, args.repo_id, info)
    return 0


if __name__ == "__main__":
    sys.exit(main())
