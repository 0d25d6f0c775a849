"""Bring your own corpus: egs2/TEMPLATE/ssl1/setup.sh, then ssl_asr.sh stages 1-10 on a tiny corpus.

One end-to-end run (about 2 minutes on one CPU core) covers the recipe a user creates
with setup.sh, the Environments block of RESULTS.md (stage 8), packing (stage 9), the
Hugging Face upload (stage 10, against a local stand-in for ``huggingface_hub``; never
the network), the executable ``exp/*/run.sh`` re-run scripts, and loading the packed ASR
model with ESPnet's ``Speech2Text`` from a fresh process in another directory.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
SETUP = REPO_ROOT / "egs2" / "TEMPLATE" / "ssl1" / "setup.sh"
MAKE_CORPUS = REPO_ROOT / "egs2" / "mini_synth" / "ssl1" / "local" / "make_corpus.py"

# A stand-in for huggingface_hub: records the calls and copies the uploaded folder.
HF_STANDIN = '''
import json, os, shutil

class HfApi:
    def __init__(self, *args, **kwargs):
        self.root = os.environ["HF_STANDIN_DIR"]

    def _log(self, **call):
        with open(os.path.join(self.root, "calls.jsonl"), "a") as f:
            f.write(json.dumps(call) + "\\n")

    def create_repo(self, repo_id, repo_type=None, private=False, exist_ok=False):
        self._log(call="create_repo", repo_id=repo_id, repo_type=repo_type, exist_ok=exist_ok)

    def upload_folder(self, repo_id, folder_path, repo_type=None, commit_message=None):
        self._log(call="upload_folder", repo_id=repo_id, repo_type=repo_type)
        shutil.copytree(folder_path, os.path.join(self.root, repo_id), dirs_exist_ok=True)
        return "standin://" + repo_id
'''

# Run in a fresh interpreter, in a directory outside the recipe: unpack both archives
# and load them the way a user of the packed models would.
LOAD_PACKED = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import soundfile
    import torch
    from espnet2.bin.asr_inference import Speech2Text
    from espnet2.main_funcs.pack_funcs import unpack
    from espnet2_birq.features import kaldi_fbank
    from espnet2_birq.tasks.ssl import BirqSSLTask

    asr_zip, ssl_zip, wav, asr_pth, ssl_pth, cmvn = sys.argv[1:7]
    files = unpack(asr_zip, "asr_unpacked")
    s2t = Speech2Text(**files, ctc_weight=1.0, beam_size=1, device="cpu")
    audio, fs = soundfile.read(wav, dtype="float32")
    nbest = s2t(kaldi_fbank(torch.from_numpy(audio), fs))
    # The packed model is the trained one, with the CMVN statistics of training.
    trained = torch.load(asr_pth, map_location="cpu")
    loaded = s2t.asr_model.state_dict()
    same_params = sorted(trained) == sorted(loaded) and all(
        torch.equal(trained[k].to(loaded[k].dtype), loaded[k]) for k in trained)
    stats = np.load(cmvn)
    mean = stats["sum"] / stats["count"]
    same_cmvn = bool(np.allclose(s2t.asr_model.normalize.mean.numpy(), mean, atol=1e-5))
    ssl_files = unpack(ssl_zip, "ssl_unpacked")
    ssl_model, _ = BirqSSLTask.build_model_from_file(
        ssl_files["ssl_train_config"], ssl_files["ssl_model_file"], "cpu")
    ssl_trained = torch.load(ssl_pth, map_location="cpu")
    same_ssl_encoder = all(torch.equal(ssl_trained["encoder." + k], v)
                           for k, v in ssl_model.encoder.state_dict().items())
    print(json.dumps({"nbest_text": nbest[0][0], "same_params": same_params,
                      "same_cmvn": same_cmvn, "same_ssl_encoder": same_ssl_encoder,
                      "asr_files": files, "ssl_files": ssl_files,
                      "asr_stats_file": str(s2t.asr_model.normalize.stats_file),
                      "num_ssl_encoder_tensors": len(ssl_model.encoder.state_dict())}))
    """
)


def make_tiny_corpus(root: Path) -> Path:
    """Kaldi data dirs pretrain/train/dev/test of synthetic speech, prepared 'elsewhere'."""
    corpus = root / "my_corpus"
    subprocess.run(
        [sys.executable, str(MAKE_CORPUS), "--data_dir", str(corpus), "--audio_dir", str(root / "audio"),
         "--num_pretrain", "40", "--train_fraction", "0.5", "--num_dev", "4", "--num_test", "4",
         "--num_speakers", "6", "--num_test_speakers", "2", "--nj", "1"],
        check=True, capture_output=True, timeout=300,
    )
    # The pre-training set needs no transcripts.
    (corpus / "pretrain" / "text").unlink()
    return corpus


def test_setup_refuses_a_non_empty_directory(tmp_path):
    target = tmp_path / "egs2" / "mine" / "ssl1"
    target.mkdir(parents=True)
    (target / "run.sh").write_text("# mine\n")
    result = subprocess.run([str(SETUP), str(target)], capture_output=True, text=True)
    assert result.returncode != 0 and "--force" in result.stderr
    assert (target / "run.sh").read_text() == "# mine\n"
    result = subprocess.run([str(SETUP), "--force", str(target)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert (target / "run.sh").read_text() == "# mine\n"  # --force adds, never overwrites
    assert os.readlink(target / "ssl_asr.sh") == "../../TEMPLATE/ssl1/ssl_asr.sh" or (target / "ssl_asr.sh").resolve() == (
        REPO_ROOT / "egs2" / "TEMPLATE" / "ssl1" / "ssl_asr.sh"
    )
    assert (target / "local" / "data.sh").stat().st_mode & 0o111


def test_own_corpus_recipe_end_to_end(tmp_path):
    corpus = make_tiny_corpus(tmp_path)
    recipe = tmp_path / "egs2" / "mycorpus" / "ssl1"
    result = subprocess.run([str(SETUP), str(recipe)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    for name in ("ssl_asr.sh", "path.sh", "cmd.sh", "utils"):
        assert (recipe / name).is_symlink() and (recipe / name).exists(), name
        assert not os.path.isabs(os.readlink(recipe / name)), name
    assert (recipe / "conf" / "train_ssl_birq_debug.yaml").is_file()
    assert os.access(recipe / "run.sh", os.X_OK) and os.access(recipe / "local" / "data.sh", os.X_OK)

    standin = tmp_path / "hf_standin"
    (standin / "huggingface_hub").mkdir(parents=True)
    (standin / "huggingface_hub" / "__init__.py").write_text(HF_STANDIN)
    hub = tmp_path / "hub"
    hub.mkdir()
    env = dict(os.environ, cmd_backend="local", CORPUS=str(corpus), HF_STANDIN_DIR=str(hub),
               OMP_NUM_THREADS="1")
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["PYTHONPATH"] = str(standin) + os.pathsep + env.get("PYTHONPATH", "")
    cmd = ["./run.sh", "--python", "python3", "--ngpu", "0", "--nj", "1", "--inference_nj", "1",
           "--ssl_config", "conf/train_ssl_birq_debug.yaml",
           "--ssl_args", "--max_epoch 1 --num_iters_per_epoch 3 --batch_bins 100000",
           "--asr_args", "--max_epoch 1 --batch_bins 100000 --num_workers 0 --use_amp false --keep_nbest_models 1",
           "--skip_upload_hf", "false", "--hf_repo", "me/my_asr", "--hf_ssl_repo", "me/my_ssl"]
    result = subprocess.run(cmd, cwd=recipe, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, (result.stdout[-4000:], result.stderr[-4000:])
    assert "Successfully finished" in result.stdout

    # Stage 8: ESPnet's Environments block, then the tables.
    exp = next((recipe / "exp").glob("asr_*"))
    ssl_exp = next((recipe / "exp").glob("ssl_train_*"))
    results = (exp / "RESULTS.md").read_text()
    head = results.split("## asr_")[0]
    assert "## Environments" in head
    for field in ("- date: `", "- python version: `", "- espnet version: `espnet ",
                  "- pytorch version: `pytorch ", "- Git hash: ",
                  f"- Pretrained model: `{ssl_exp.relative_to(recipe)}/valid.best_rq_acc.ave.pth`"):
        assert field in head, field
    assert "|dataset|Snt|Wrd|Corr|Sub|Del|Ins|Err|S.Err|" in results
    assert "speakers" in json.loads(next(exp.glob("decode_*/test/score_wer/summary.json")).read_text())

    # exp/*/run.sh re-run the exact command, and are executable.
    for d in (exp, ssl_exp):
        rerun = d / "run.sh"
        assert os.access(rerun, os.X_OK), rerun
        text = rerun.read_text()
        assert "--hf_ssl_repo me/my_ssl" in text and text.startswith("#!/usr/bin/env bash")
    # Stage 9 archives; stage 10 uploaded them (to the stand-in) with a model card.
    asr_zip = next(exp.glob("*.zip"))
    ssl_zip = ssl_exp / f"{ssl_exp.name}_valid.best_rq_acc.ave.zip"
    assert ssl_zip.is_file()
    calls = [json.loads(line) for line in (hub / "calls.jsonl").read_text().splitlines()]
    assert [(c["call"], c["repo_id"]) for c in calls] == [
        ("create_repo", "me/my_asr"), ("upload_folder", "me/my_asr"),
        ("create_repo", "me/my_ssl"), ("upload_folder", "me/my_ssl"),
    ]
    card = (hub / "me" / "my_asr" / "README.md").read_text()
    assert "library_name: espnet" in card and "## Environments" in card
    assert (hub / "me" / "my_asr" / "meta.yaml").is_file()

    # The packed models load from a fresh process, in a directory without the recipe.
    elsewhere = tmp_path / "user"
    elsewhere.mkdir()
    test_utt = (recipe / "data" / "test" / "wav.scp").read_text().split()[0]
    wav = dict(line.split(" ", 1) for line in (recipe / "data" / "test" / "wav.scp").read_text().splitlines())[test_utt]
    asr_pth = (exp / "valid.cer_ctc.ave.pth").resolve()
    ssl_pth = (ssl_exp / "valid.best_rq_acc.ave.pth").resolve()
    # the statistics the model was trained with (exp's config.yaml, relative to the recipe)
    cmvn = recipe / yaml.safe_load((exp / "config.yaml").read_text())["normalize_conf"]["stats_file"]
    env_fresh = {k: v for k, v in env.items() if k != "PYTHONPATH"}
    env_fresh["PYTHONPATH"] = str(REPO_ROOT)
    proc = subprocess.run([sys.executable, "-c", LOAD_PACKED, str(asr_zip), str(ssl_zip), wav,
                           str(asr_pth), str(ssl_pth), str(cmvn)],
                          cwd=elsewhere, capture_output=True, text=True, timeout=300, env=env_fresh)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert isinstance(out["nbest_text"], str)
    assert out["same_params"] and out["same_cmvn"] and out["same_ssl_encoder"], out
    assert out["num_ssl_encoder_tensors"] > 10
    # Every path points into the unpacked copies, not into the recipe.
    for path in list(out["asr_files"].values()) + [out["asr_stats_file"]] + list(out["ssl_files"].values()):
        assert (elsewhere / path).resolve().is_relative_to(elsewhere.resolve()), path
    assert Path(out["asr_stats_file"]).name == cmvn.name
