"""The BiRQ paper's encoders C2 (LibriSpeech) and C3 (AMI/YODAS) as shipped configs.

- conf/train_ssl_{birq,best_rq}_{c2,c3}.yaml build on CPU (``--input_size 80``, as
  ssl_asr.sh passes it for fbank) with the parameter counts their comments and the recipe
  READMEs state, within 3% of the paper's 155M / 275M (encoder);
- C2 uses ESPnet's Conformer (full attention), C3 the windowed one (window 200);
- the published settings: 10 blocks, AdamW lr 1e-4, batches of 64 / 128 utterances,
  100 epochs, the published BiRQ loss with labels from block 7 of 10;
- ``--print_config`` works for them (SSL task, and the ASR task on the merged
  fine-tuning config);
- conf/train_asr_ctc_{c2,c3}.yaml: CTC, 30 epochs, tri-stage lr; they build after
  ``merge_configs`` with their SSL config through espnet2_birq.bin.asr_train;
- the LibriSpeech, AMI and YODAS recipes use them by default.

The 300M-parameter C3 models take a few seconds each to build; every config is built
once per session.
"""

import io
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict

import pytest
import torch
import yaml

from espnet2_birq.encoders.windowed_conformer import attention_window_of
from tests.conftest import RECIPE_VOCAB

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"

PAPER_ENCODER = {"c2": 155e6, "c3": 275e6}
ENCODER = {"c2": 158_567_424, "c3": 281_677_824}
TOTAL = {
    ("best_rq", "c2"): 164_867_072,
    ("birq", "c2"): 171_166_720,
    ("best_rq", "c3"): 290_074_624,
    ("birq", "c3"): 298_471_424,
}
WIDTH = {"c2": 768, "c3": 1024}
BATCH = {"c2": 64, "c3": 128}
VOCAB = RECIPE_VOCAB  # the token_list fixture (tests/conftest.py)
ASR_TOTAL = {m: ENCODER[m] + WIDTH[m] * VOCAB + VOCAB for m in ENCODER}  # linear CTC head

PUBLISHED_BIRQ = dict(
    enhanced_weight=0.1, anchor_weight=2.4, label_layer=7, label_norm="layer",
    label_noise=1.0, tau_start=0.5, tau_end=0.5, tau_decay=1.0, soft_targets=False,
    stop_gradient_labels=False, gamma_schedule="constant", gamma_max=1.0,
    warmup_steps=0, codebook_size=8192, code_dim=16, num_codebooks=1, seed=0,
    enhanced_codebook_size=8192, enhanced_code_dim=16, enhanced_seed=1,
    # this project's additions, off
    label_grad_scale=1.0, subtract_value_estimate=False, diversity_weight=0.0,
)
CASES = [(o, m) for m in ("c2", "c3") for o in ("birq", "best_rq")]


def _yaml(path: Path) -> Dict:
    with path.open(encoding="utf-8") as f:
        return yaml.safe_load(f) or {}


def ssl_config(objective: str, model: str) -> Path:
    return CONF / f"train_ssl_{objective}_{model}.yaml"


# stats_file and token_list (300 BPE pieces): fixtures of tests/conftest.py


_BUILT: Dict[Path, Dict] = {}


def build(config: Path, stats: str) -> Dict:
    """Build an SSL config as ssl_asr.sh does (features: --input_size 80); counts, cached."""
    if config not in _BUILT:
        from espnet2_birq.tasks.ssl import BirqSSLTask

        args = BirqSSLTask.get_parser().parse_args(
            ["--config", str(config), "--input_size", "80",
             "--normalize_conf", f"stats_file={stats}"]
        )
        model = BirqSSLTask.build_model(args)
        blocks = list(model.encoder.encoders)
        _BUILT[config] = {
            "encoder": sum(p.numel() for p in model.encoder.parameters()),
            "total": sum(p.numel() for p in model.parameters()),
            "encoder_type": type(model.encoder).__name__,
            "window": attention_window_of(model.encoder),
            "block_windows": {
                getattr(getattr(b.self_attn, "band_mask", None), "window", None) for b in blocks
            },
            "num_blocks": len(blocks),
            "label_layers": [
                loss.label_pass().layer for loss in model.losses if hasattr(loss, "label_pass")
            ],
        }
        del model
    return _BUILT[config]


@pytest.mark.parametrize("objective,model", CASES)
def test_ssl_config_builds_with_the_documented_counts(objective, model, stats_file):
    config = ssl_config(objective, model)
    counts = build(config, stats_file)
    assert counts["encoder"] == ENCODER[model]
    assert counts["total"] == TOTAL[(objective, model)]
    assert abs(counts["encoder"] / PAPER_ENCODER[model] - 1) <= 0.03
    assert counts["num_blocks"] == 10
    # the header comment states the measured numbers
    header = config.read_text().split("\nfrontend:")[0]
    assert f"{ENCODER[model]:,}" in header and f"{TOTAL[(objective, model)]:,}" in header
    if objective == "birq":
        assert counts["label_layers"] == [7]


@pytest.mark.parametrize("objective,model", CASES)
def test_attention(objective, model, stats_file):
    counts = build(ssl_config(objective, model), stats_file)
    cfg = _yaml(ssl_config(objective, model))
    if model == "c2":  # full attention: ESPnet's Conformer, nothing installed
        assert cfg["encoder"] == "conformer"
        assert counts["encoder_type"] == "ConformerEncoder"
        assert counts["window"] is None and counts["block_windows"] == {None}
    else:
        assert cfg["encoder"] == "windowed_conformer"
        assert counts["encoder_type"] == "WindowedConformerEncoder"
        assert counts["window"] == 200 and counts["block_windows"] == {200}


@pytest.mark.parametrize("objective,model", CASES)
def test_published_settings(objective, model):
    cfg = _yaml(ssl_config(objective, model))
    enc = cfg["encoder_conf"]
    assert enc["num_blocks"] == 10 and enc["output_size"] == WIDTH[model]
    assert enc["output_size"] // enc["attention_heads"] == 64
    assert enc["linear_units"] == 4 * enc["output_size"]
    assert cfg["optim"] == "adamw" and cfg["optim_conf"]["lr"] == 1.0e-4
    assert cfg["scheduler"] == "warmuplr"
    assert cfg["batch_type"] == "sorted" and cfg["batch_size"] == BATCH[model]
    assert cfg.get("accum_grad", 1) == 1
    assert cfg["max_epoch"] == 100
    assert cfg["max_input_length"] is None
    assert cfg["use_amp"] is True
    assert cfg["normalize"] == "global_mvn"
    (loss,) = cfg["loss"]
    assert loss["name"] == objective
    if objective == "birq":
        assert loss["conf"] == PUBLISHED_BIRQ
    else:
        quantiser = ("codebook_size", "code_dim", "num_codebooks", "seed")
        assert loss["conf"] == {k: PUBLISHED_BIRQ[k] for k in quantiser}


@pytest.mark.parametrize("model", ["c2", "c3"])
def test_best_rq_and_birq_differ_only_in_the_loss(model):
    birq, best_rq = _yaml(ssl_config("birq", model)), _yaml(ssl_config("best_rq", model))
    birq.pop("loss"), best_rq.pop("loss")
    assert birq == best_rq


def test_c2_and_c3_differ_only_in_size_window_and_batch():
    c2, c3 = _yaml(ssl_config("birq", "c2")), _yaml(ssl_config("birq", "c3"))
    assert set(c2) == set(c3)
    assert {k for k in c2 if c2[k] != c3[k]} == {"encoder", "encoder_conf", "batch_size"}
    diff = {k for k in set(c2["encoder_conf"]) | set(c3["encoder_conf"])
            if c2["encoder_conf"].get(k) != c3["encoder_conf"].get(k)}
    assert diff == {"attention_window", "output_size", "attention_heads", "linear_units"}


def _print_config(task, argv, monkeypatch) -> Dict:
    """``--print_config`` as ESPnet runs it (it re-reads sys.argv)."""
    monkeypatch.setattr(sys, "argv", ["train.py", *argv, "--print_config"])
    out = io.StringIO()
    task.print_config(file=out)
    return yaml.safe_load(out.getvalue())


@pytest.mark.parametrize("objective,model", CASES)
def test_print_config(objective, model, monkeypatch):
    from espnet2_birq.tasks.ssl import BirqSSLTask

    argv = ["--config", str(ssl_config(objective, model)), "--input_size", "80"]
    printed = _print_config(BirqSSLTask, argv, monkeypatch)
    cfg = _yaml(ssl_config(objective, model))
    assert printed["encoder"] == cfg["encoder"]
    for key, value in cfg["encoder_conf"].items():
        assert printed["encoder_conf"][key] == value, key
    # defaults of the encoder's other arguments are listed too (full signature)
    assert "interctc_layer_idx" in printed["encoder_conf"]
    assert printed["loss"] == cfg["loss"]
    assert printed["batch_size"] == BATCH[model]
    assert printed["scheduler_conf"]["warmup_steps"] == 25000


def test_print_config_command_line():
    """The real command (C3: the windowed encoder must be known to the parser)."""
    proc = subprocess.run(
        [sys.executable, "-m", "espnet2_birq.bin.ssl_train", "--config",
         str(ssl_config("birq", "c3")), "--input_size", "80", "--print_config"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    printed = yaml.safe_load(proc.stdout)
    assert printed["encoder"] == "windowed_conformer"
    assert printed["encoder_conf"]["attention_window"] == 200


# ----------------------------------------------------------------- fine-tuning
def merged_asr_config(model: str, tmp_path: Path) -> Path:
    from espnet2_birq.bin.make_finetune_config import merge_configs

    ssl, asr = _yaml(ssl_config("birq", model)), _yaml(CONF / f"train_asr_ctc_{model}.yaml")
    merged = merge_configs(ssl, asr)
    out = tmp_path / f"train_asr_{model}.yaml"
    out.write_text(yaml.safe_dump(merged, sort_keys=False), encoding="utf-8")
    return out


@pytest.mark.parametrize("model", ["c2", "c3"])
def test_finetune_config(model, stats_file, token_list, tmp_path, monkeypatch):
    from espnet2.schedulers.tristage_lr import TristageLR

    from espnet2_birq.bin.asr_train import GuardedASRTask

    cfg = _yaml(CONF / f"train_asr_ctc_{model}.yaml")
    assert cfg["model_conf"]["ctc_weight"] == 1.0
    assert cfg["max_epoch"] == 30
    assert cfg["scheduler"] == "tristagelr"
    assert cfg["batch_type"] == "sorted" and cfg["batch_size"] == BATCH[model]
    conf = cfg["scheduler_conf"]
    assert conf["warmup_ratio"] + conf["hold_ratio"] + conf["decay_ratio"] == pytest.approx(1.0)
    if model == "c2":  # train-clean-100: 28,539 utterances
        assert conf["max_steps"] == 30 * (28_539 // 64)
    scheduler = TristageLR(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-4), **conf)
    assert scheduler.warmup_steps > 0 and scheduler.decay_steps > 0

    # the fine-tuning model ssl_asr.sh stage 6 builds (merged config, its arguments)
    path = merged_asr_config(model, tmp_path)
    argv = ["--config", str(path), "--input_size", "80", "--token_list", token_list,
            "--normalize", "global_mvn", "--normalize_conf", f"stats_file={stats_file}"]
    args = GuardedASRTask.get_parser().parse_args(argv)
    asr = GuardedASRTask.build_model(args)
    assert sum(p.numel() for p in asr.encoder.parameters()) == ENCODER[model]
    assert sum(p.numel() for p in asr.parameters()) == ASR_TOTAL[model]
    assert asr.decoder is None
    assert attention_window_of(asr.encoder) == (200 if model == "c3" else None)
    del asr
    printed = _print_config(GuardedASRTask, argv, monkeypatch)
    assert printed["encoder"] == ("windowed_conformer" if model == "c3" else "conformer")
    assert printed["scheduler_conf"]["max_steps"] == conf["max_steps"]
    # the header comment states the measured numbers
    header = (CONF / f"train_asr_ctc_{model}.yaml").read_text().split("\nencoder_conf:")[0]
    assert f"{ASR_TOTAL[model]:,}" in header


# -------------------------------------------------------------------- recipes
RECIPE_DEFAULTS = {
    "librispeech": ("../../../conf/train_ssl_birq_c2.yaml", "../../../conf/train_asr_ctc_c2.yaml"),
    "ami": ("../../../conf/train_ssl_birq_c3.yaml", "../../../conf/train_asr_ctc_c3.yaml"),
    "yodas": ("../../../conf/train_ssl_birq_c3.yaml", "conf/train_asr_ctc.yaml"),
}


@pytest.mark.parametrize("corpus", sorted(RECIPE_DEFAULTS))
def test_recipes_default_to_the_paper_configs(corpus):
    recipe = REPO / "egs2" / corpus / "ssl1"
    ssl, asr = RECIPE_DEFAULTS[corpus]
    script = (recipe / "run.sh").read_text()
    assert re.search(rf"^ssl_config={re.escape(ssl)}\b", script, re.M)
    assert re.search(rf"^asr_config={re.escape(asr)}\b", script, re.M)
    for path in (ssl, asr, ssl.replace("birq", "best_rq")):
        assert (recipe / path).is_file(), path
    readme = (recipe / "README.md").read_text()
    model = "c2" if "c2" in ssl else "c3"
    for objective in ("birq", "best_rq"):
        assert f"{TOTAL[(objective, model)]:,}" in readme
    assert f"{ENCODER[model]:,}" in readme
    assert f"{ASR_TOTAL[model]:,}" in readme
