"""Dry runs of every shipped config and of the corpus recipes' run.sh.

- SSL configs (top-level ``conf/`` and ``egs2/*/ssl1/conf/``) build through
  ``BirqSSLTask.build_model`` with their real normalisation (global_mvn, a dummy stats
  file), and the recipes' paper-scale models have the documented parameter counts;
- ASR fine-tuning configs build through ESPnet's ``ASRTask.build_model`` after
  ``merge_configs`` with the recipe's (or, top-level, the shared) SSL config;
- decoding configs parse with ``espnet2_birq.bin.asr_decode.get_parser()``;
- ``run.sh --help`` of every corpus exits 0 and names its sets and configs.

The 160M-parameter models take a few seconds each to build on CPU: every config is
built once (cached by real path, so symlinked configs are not built twice).
"""

import subprocess
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CORPORA = ("librispeech", "ami", "yodas")
RECIPE_CONF = {c: REPO / "egs2" / c / "ssl1" / "conf" for c in CORPORA}

ENCODER_PARAMS = 159_116_288  # conformer d=512, 24 blocks (README.md; the BiRQ paper's is 155M)
SSL_PARAMS = {"birq": 167_521_280, "best_rq": 163_318_784, "mt4ssl": 159_635_444}
VOCAB = 300  # run.sh --nbpe 300
ASR_CTC_PARAMS = ENCODER_PARAMS + 512 * VOCAB + VOCAB

# keys a recipe SSL config may change w.r.t. the shared top-level config of the same
# name (batch, run length, step-based schedules); the model itself must be identical
RECIPE_TUNABLE = {"batch_bins", "accum_grad", "max_input_length", "max_epoch",
                  "log_interval", "num_workers", "scheduler_conf", "keep_nbest_models"}
LOSS_TUNABLE = {"tau_decay", "gamma_ramp_steps", "gamma_step_interval", "warmup_steps"}

# what each run.sh must mention in its --help
RECIPE_SETS = {
    "librispeech": (["pretrain_960", "train_clean_100", "dev_clean", "dev_other",
                     "test_clean", "test_other"], []),
    "ami": (["ihm_train", "ihm_dev", "ihm_eval"], []),
    "yodas": (["pretrain", "finetune", "dev", "test", "--hours", "--finetune_hours"], []),
}


def _yaml(path: Path) -> Dict:
    with path.open(encoding="utf-8") as f:
        return yaml.safe_load(f) or {}


def shipped(pattern: str) -> List[Path]:
    files = sorted(REPO.glob(f"conf/{pattern}"))
    for c in CORPORA:
        files += sorted(RECIPE_CONF[c].glob(pattern))
    return files


def _id(path: Path) -> str:
    return str(path.relative_to(REPO))


SSL_CONFIGS = shipped("train_ssl_*.yaml")
ASR_CONFIGS = shipped("train_asr*.yaml")
DECODE_CONFIGS = shipped("decode*.yaml")
BLJUST_CONFIGS = shipped("train_bljust_*.yaml")  # dry runs in tests/test_bljust.py


@pytest.fixture(scope="module")
def stats_file(tmp_path_factory) -> str:
    """A global-CMVN stats file as ESPnet's collect_stats writes it (count/sum/sum_square)."""
    path = tmp_path_factory.mktemp("cmvn") / "cmvn.npz"
    rng = np.random.default_rng(0)
    count = 1000
    x = rng.standard_normal((count, 80))
    np.savez(path, count=np.array(count), sum=x.sum(0), sum_square=(x**2).sum(0))
    return str(path)


@pytest.fixture(scope="module")
def token_list(tmp_path_factory) -> str:
    """A token list shaped like stage 3's: <blank>, <unk>, pieces, <sos/eos>."""
    path = tmp_path_factory.mktemp("tokens") / "tokens.txt"
    tokens = ["<blank>", "<unk>"] + [f"\u2581P{i}" for i in range(VOCAB - 3)] + ["<sos/eos>"]
    path.write_text("\n".join(tokens) + "\n", encoding="utf-8")
    return str(path)


_SSL_CACHE: Dict[Path, Dict[str, int]] = {}


def build_ssl(config: Path, stats: str) -> Dict[str, int]:
    """Build an SSL config with ssl.sh's arguments; parameter counts, cached by real path."""
    key = config.resolve()
    if key not in _SSL_CACHE:
        from espnet2_birq.tasks.ssl import BirqSSLTask

        argv = ["--config", str(config), "--input_size", "80"]
        if _yaml(config).get("normalize") == "global_mvn":  # as ssl.sh passes it
            argv += ["--normalize_conf", f"stats_file={stats}"]
        args = BirqSSLTask.get_parser().parse_args(argv)
        model = BirqSSLTask.build_model(args)
        _SSL_CACHE[key] = {
            "total": sum(p.numel() for p in model.parameters()),
            "encoder": sum(p.numel() for p in model.encoder.parameters()),
            "normalize": type(model.normalize).__name__ if model.normalize else "none",
        }
        del model
    return _SSL_CACHE[key]


def test_configs_found():
    assert len(SSL_CONFIGS) >= 8 + 2 * len(CORPORA)
    for c in CORPORA:
        conf = RECIPE_CONF[c]
        for name in ("train_ssl_birq_conformer.yaml", "train_ssl_best_rq_conformer.yaml",
                     "train_asr_ctc.yaml", "decode_ctc_greedy.yaml"):
            assert (conf / name).is_file(), conf / name
        # every shipped YAML is covered by one of the dry runs below
        for f in conf.iterdir():
            if f.suffix in (".yaml", ".yml"):
                assert f in SSL_CONFIGS + ASR_CONFIGS + DECODE_CONFIGS + BLJUST_CONFIGS, f


@pytest.mark.parametrize("config", SSL_CONFIGS, ids=_id)
def test_ssl_config_builds(config, stats_file):
    counts = build_ssl(config, stats_file)
    assert counts["encoder"] > 0
    cfg = _yaml(config)
    if cfg.get("normalize") == "global_mvn":
        assert counts["normalize"] == "GlobalMVN"
    if config.parent != REPO / "conf":  # recipe configs: paper scale, exact counts
        objective = next(o for o in SSL_PARAMS if f"_{o}_" in config.name)
        assert counts["encoder"] == ENCODER_PARAMS
        assert counts["total"] == SSL_PARAMS[objective]
        assert cfg["normalize"] == "global_mvn"


@pytest.mark.parametrize("corpus", CORPORA)
@pytest.mark.parametrize("objective", ["birq", "best_rq", "mt4ssl"])
def test_recipe_ssl_config_is_the_shared_model(corpus, objective):
    """A recipe config changes only batch/run length/schedules, never the model."""
    name = f"train_ssl_{objective}_conformer.yaml"
    shared, recipe = _yaml(REPO / "conf" / name), _yaml(RECIPE_CONF[corpus] / name)
    for key in set(shared) | set(recipe):
        if key in RECIPE_TUNABLE:
            continue
        if key == "loss":
            assert [x["name"] for x in recipe[key]] == [x["name"] for x in shared[key]]
            for r, s in zip(recipe[key], shared[key]):
                for k in set(r["conf"]) | set(s["conf"]):
                    if k not in LOSS_TUNABLE:
                        assert r["conf"].get(k) == s["conf"].get(k), (key, k)
            continue
        assert recipe.get(key) == shared.get(key), key
    # BiRQ as published: enhanced labels from round(0.7 x depth), constant weights
    if objective == "birq":
        from espnet2_birq.losses.birq import default_label_layer

        conf = recipe["loss"][0]["conf"]
        assert conf["label_layer"] == default_label_layer(recipe["encoder_conf"]["num_blocks"])
        assert (conf["enhanced_weight"], conf["anchor_weight"]) == (0.1, 2.4)
        assert conf["gamma_schedule"] == "constant" and conf["warmup_steps"] == 0
    assert recipe["batch_type"] == "numel" and recipe.get("accum_grad", 1) >= 1


def _ssl_partner(asr_config: Path) -> Path:
    """The SSL config whose encoder the fine-tuning config is merged with (run.sh default)."""
    return asr_config.parent / "train_ssl_birq_conformer.yaml"


@pytest.mark.parametrize("config", ASR_CONFIGS, ids=_id)
def test_asr_config_builds_after_merge(config, stats_file, token_list, tmp_path):
    from espnet2.tasks.asr import ASRTask

    from espnet2_birq.bin.make_finetune_config import merge_configs

    ssl_config = _ssl_partner(config)
    merged = merge_configs(_yaml(ssl_config), _yaml(config))
    out = tmp_path / "train_asr.yaml"
    out.write_text(yaml.safe_dump(merged, sort_keys=False), encoding="utf-8")
    # the arguments ssl.sh stage 6 passes
    args = ASRTask.get_parser().parse_args(
        ["--config", str(out), "--input_size", "80", "--token_list", token_list,
         "--normalize", "global_mvn", "--normalize_conf", f"stats_file={stats_file}"]
    )
    model = ASRTask.build_model(args)
    encoder = sum(p.numel() for p in model.encoder.parameters())
    total = sum(p.numel() for p in model.parameters())
    assert encoder == build_ssl(ssl_config, stats_file)["encoder"]
    assert type(model.normalize).__name__ == "GlobalMVN"
    if config.parent != REPO / "conf":
        assert merged["model_conf"]["ctc_weight"] == 1.0
        assert model.decoder is None
        assert total == ASR_CTC_PARAMS


@pytest.mark.parametrize("config", DECODE_CONFIGS, ids=_id)
def test_decode_config_parses(config, tmp_path):
    from espnet2_birq.bin.asr_decode import get_parser

    args = get_parser().parse_args(
        ["--config", str(config), "--output_dir", str(tmp_path / "out"),
         "--data_path_and_name_and_type", "dump/fbank/test/feats.scp,speech,kaldi_ark",
         "--asr_train_config", "exp/asr/config.yaml", "--asr_model_file", "exp/asr/m.pth"]
    )
    cfg = _yaml(config)
    for key, value in cfg.items():
        assert getattr(args, key) == value, key
    if "ctc_greedy" in config.name:
        assert args.ctc_greedy is True


def _run_help(corpus: str, *extra: str) -> str:
    proc = subprocess.run(
        ["bash", "run.sh", *extra, "--help"], cwd=REPO / "egs2" / corpus / "ssl1",
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stdout
    return proc.stdout


@pytest.mark.parametrize("corpus", CORPORA)
def test_run_sh_help(corpus):
    out = _run_help(corpus)
    words, _ = RECIPE_SETS[corpus]
    for word in words + ["--ngpu 8", "--nbpe 300", "--stage", "--ssl_args", "--num_nodes"]:
        assert word in out, (corpus, word)
    # the configs run.sh points at exist in the recipe
    for name in ("train_ssl_birq_conformer.yaml", "train_ssl_best_rq_conformer.yaml",
                 "train_asr_ctc.yaml", "decode_ctc_greedy.yaml"):
        assert f"conf/{name}" in out
    script = (REPO / "egs2" / corpus / "ssl1" / "run.sh").read_text()
    assert script.startswith("#!/usr/bin/env bash\n")
    assert subprocess.run(["bash", "-n", str(REPO / "egs2" / corpus / "ssl1" / "run.sh")]).returncode == 0


def test_run_sh_corpus_options():
    out = _run_help("ami", "--mic", "sdm")
    for word in ("sdm_train", "sdm_dev", "sdm_eval", "--mic sdm"):
        assert word in out
    out = _run_help("yodas", "--hours", "1000", "--finetune_hours", "50",
                    "--local_data_opts", "--download false")
    assert '--local_data_opts "--hours 1000 --finetune_hours 50 --download false"' in out
    bad = subprocess.run(
        ["bash", "run.sh", "--mic", "xyz"], cwd=REPO / "egs2" / "ami" / "ssl1",
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=60,
    )
    assert bad.returncode != 0 and "ihm or sdm" in bad.stdout
