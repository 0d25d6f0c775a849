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

import pytest
import yaml

from tests.conftest import RECIPE_VOCAB

REPO = Path(__file__).resolve().parents[1]
CORPORA = ("librispeech", "ami", "yodas")
RECIPE_CONF = {c: REPO / "egs2" / c / "ssl1" / "conf" for c in CORPORA}

ENCODER_PARAMS = 159_116_288  # conformer d=512, 24 blocks (README.md; the BiRQ paper's is 155M)
SSL_PARAMS = {"birq": 167_521_280, "best_rq": 163_318_784, "mt4ssl": 159_635_956}  # mt4ssl: + the 512-value mask embedding
VOCAB = RECIPE_VOCAB  # run.sh --nbpe 300
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


# stats_file and token_list (300 BPE pieces): fixtures of tests/conftest.py


_SSL_CACHE: Dict[Path, Dict[str, int]] = {}


def build_ssl(config: Path, stats: str) -> Dict[str, int]:
    """Build an SSL config with ssl_asr.sh's arguments; parameter counts, cached by real path."""
    key = config.resolve()
    if key not in _SSL_CACHE:
        from espnet2_birq.tasks.ssl import BirqSSLTask

        argv = ["--config", str(config), "--input_size", "80"]
        if _yaml(config).get("normalize") == "global_mvn":  # as ssl_asr.sh passes it
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
    # the arguments ssl_asr.sh stage 6 passes
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


AMI_FAKE_PYTHON = """\
#!/usr/bin/env bash
# stand-in interpreter for ssl_asr.sh stages 3-8: logs its arguments, writes what each step leaves
echo "$*" >> "$(dirname "$0")/python_calls.txt"
out=; output=; inp=; lm=; prev=
for a in "$@"; do
    case "$prev" in --output_dir) out=$a ;; --output) output=$a ;; --input) inp=$a ;; --lm) lm=$a ;; esac
    prev=$a
done
case "$*" in
    *"check_init name"*) echo valid.best_rq_acc.ave.pth ;;
    *aggregate_stats_dirs*)
        for s in train valid; do
            mkdir -p "$out/$s"; echo "u1 10,80" > "$out/$s/speech_shape"; echo "u1 3" > "$out/$s/text_shape"
            touch "$out/$s/feats_stats.npz"
        done ;;
    *espnet2.bin.launch*)
        mkdir -p "$out"; touch "$out/valid.best_rq_acc.ave.pth" "$out/valid.cer_ctc.ave.pth" "$out/config.yaml" ;;
    *tokenize_text*"--write_vocabulary true"*) printf '<blank>\\n<unk>\\nA\\n<sos/eos>\\n' > "$output" ;;
    *tokenize_text*) cut -d ' ' -f 2- "$inp" > "$output" ;;
    *"kaldingram.cli train"*) printf 'ngram 1=3\\n' > "$lm" ;;
    *asr_decode*) mkdir -p "$out/1best_recog"; echo "u1 A" > "$out/1best_recog/text" ;;
esac
"""


def test_ami_microphones_run_side_by_side(tmp_path):
    """./run.sh --mic ihm, then --mic sdm, then ihm again: each condition has its own
    dump/<mic>, exp/<mic> and data/<mic>_token_list (token list, statistics, pre-training,
    fine-tuning, n-gram and decoding), so the second run neither overwrites the first one's
    token list nor is refused by its stage 5; a pre-trained encoder from elsewhere (the
    paper's YODAS model) is shared on purpose. Stages 3-8 with a stand-in interpreter."""
    import os

    root = tmp_path / "repo"
    recipe = root / "egs2" / "ami" / "ssl1"
    recipe.mkdir(parents=True)
    (root / "conf").symlink_to(REPO / "conf")
    real = REPO / "egs2" / "ami" / "ssl1"
    for name in ("run.sh", "db.sh", "conf", "local"):
        (recipe / name).symlink_to(real / name)
    for name in ("ssl_asr.sh", "path.sh", "cmd.sh"):
        (recipe / name).symlink_to(REPO / "egs2" / "TEMPLATE" / "ssl1" / name)
    (recipe / "utils").symlink_to(REPO / "utils")
    fake = tmp_path / "fake_python"
    fake.write_text(AMI_FAKE_PYTHON)
    fake.chmod(0o755)
    for mic in ("ihm", "sdm"):
        for part in ("train", "dev", "eval"):
            utts = {f"{mic}_{part}_u{i}": f"{mic.upper()} {part.upper()} WORDS {i}" for i in range(2)}
            text = "".join(f"{u} {t}\n" for u, t in utts.items())
            utt2spk = "".join(f"{u} {u}\n" for u in utts)
            for d in (recipe / "data" / f"{mic}_{part}", recipe / "dump" / mic / "fbank" / f"{mic}_{part}"):
                d.mkdir(parents=True)
                (d / "text").write_text(text)
                (d / "utt2spk").write_text(utt2spk)
            (recipe / "dump" / mic / "fbank" / f"{mic}_{part}" / "feats.scp").write_text(
                "".join(f"{u} x.ark:1\n" for u in utts))

    def run(mic, *extra):
        env = dict(os.environ, cmd_backend="local")
        return subprocess.run(["./run.sh", "--mic", mic, "--python", str(fake), "--ngpu", "0",
                               "--stage", "3", "--stop_stage", "8", *extra],
                              cwd=recipe, capture_output=True, text=True, timeout=300, env=env)

    asr = "asr_train_asr_ctc_c3_train_ssl_birq_c3_bpe300"
    decode = "decode_ctc_ngram_asr_model_valid.cer_ctc.ave_ngram_ngram_bpe_unigram300_4gram"
    for mic in ("ihm", "sdm"):
        result = run(mic)
        assert result.returncode == 0, mic + result.stdout[-3000:] + result.stderr[-3000:]
        tokens = recipe / "data" / f"{mic}_token_list" / "bpe_unigram300"
        assert (tokens / "train.txt").read_text().startswith(f"{mic.upper()} TRAIN WORDS 0")
        exp = recipe / "exp" / mic
        for done in ("ssl_stats_fbank", "asr_stats_fbank_bpe300", "ssl_train_ssl_birq_c3", asr,
                     "ngram_bpe_unigram300"):
            assert (exp / done / ".done").is_file(), (mic, done)
        assert (exp / "ngram_bpe_unigram300" / "data" / "train.txt").read_text().startswith(f"{mic}_train_u0 ")
        assert (exp / asr / decode / f"{mic}_eval" / "text").read_text().startswith("u1 A\n")
    # the first condition's token list was not remade by the second run, and a re-run of it
    # finds all its work done (no "inputs changed" refusal in stage 5)
    assert (recipe / "data" / "ihm_token_list" / "bpe_unigram300" / "train.txt").read_text().startswith("IHM")
    result = run("ihm")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "SSL pre-training exp/ihm/ssl_train_ssl_birq_c3: already done" in result.stdout
    assert "n-gram exp/ihm/ngram_bpe_unigram300: already done" in result.stdout
    calls = (tmp_path / "python_calls.txt").read_text().splitlines()
    assert len([c for c in calls if "kaldingram.cli train" in c]) == 2
    assert len([c for c in calls if "espnet2.bin.launch" in c and "espnet2_birq.bin.ssl_train" in c]) == 2

    # the paper's protocol: one pre-trained encoder (YODAS), fine-tuned for each condition
    shared = tmp_path / "yodas_ssl"
    shared.mkdir()
    (shared / "config.yaml").write_text("{}\n")
    (shared / "valid.best_rq_acc.ave.pth").write_text("x\n")
    for mic in ("ihm", "sdm"):
        result = run(mic, "--skip_stages", "5", "--ssl_exp", str(shared),
                     "--pretrained_model", str(shared / "valid.best_rq_acc.ave.pth"))
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        assert (recipe / "exp" / mic / "asr_train_asr_ctc_c3_init_yodas_ssl_bpe300" / ".done").is_file()


# --------------------------------------------------------------------------
# The corpus READMEs against the shipped configs, run.sh and ssl_asr.sh's names
# --------------------------------------------------------------------------
import itertools
import re


def _readme(corpus: str) -> str:
    return (REPO / "egs2" / corpus / "ssl1" / "README.md").read_text(encoding="utf-8")


def _run_sh_defaults(corpus: str) -> Dict[str, str]:
    """The plain ``name=value`` settings of a run.sh (values without shell expansion)."""
    values = {}
    for line in (REPO / "egs2" / corpus / "ssl1" / "run.sh").read_text().splitlines():
        m = re.match(r"^([a-z_]+)=([^\s$\"'#]+)\s*(#.*)?$", line)
        if m:
            values[m.group(1)] = m.group(2)
    return values


def _expand_braces(text: str) -> List[str]:
    m = re.search(r"\{([^{}]*)\}", text)
    if not m:
        return [text]
    return [x for alt in m.group(1).split(",")
            for x in _expand_braces(text[: m.start()] + alt + text[m.end():])]


def _resolve(corpus: str, mention: str) -> List[Path]:
    """A config path named in a README: relative to the recipe, or (the links' targets,
    written ``../../../../conf/...``) to its conf/ directory; globs and braces expanded."""
    recipe = REPO / "egs2" / corpus / "ssl1"
    found = []
    for path in _expand_braces(mention):
        for base in (recipe, recipe / "conf"):
            hits = sorted(base.glob(path)) if "*" in path else [base / path] if (base / path).exists() else []
            if hits:
                found += hits
                break
        else:
            return []
    return found


def _named_configs(corpus: str) -> Dict[str, List[Path]]:
    mentions = set(re.findall(r"`([^`\s]+\.yaml)`", _readme(corpus))) - {"config.yaml"}  # an experiment's
    return {m: _resolve(corpus, m) for m in mentions}


def _lookup(tree, key: str) -> list:
    """Every value of ``key`` anywhere in a parsed YAML tree."""
    out = []
    if isinstance(tree, dict):
        for k, v in tree.items():
            if k == key:
                out.append(v)
            out += _lookup(v, key)
    elif isinstance(tree, list):
        for v in tree:
            out += _lookup(v, key)
    return out


def _configs_of(corpus: str) -> List[Dict]:
    paths = {p.resolve() for ps in _named_configs(corpus).values() for p in ps}
    return [_yaml(p) for p in sorted(paths)]


@pytest.mark.parametrize("corpus", CORPORA)
def test_readme_config_paths_exist(corpus):
    named = _named_configs(corpus)
    assert named
    missing = [m for m, paths in named.items() if not paths]
    assert not missing, f"{corpus}/README.md names configs that do not exist: {missing}"


TABLE_FACTS = [  # (pattern in the "what" cell, key, value from the match)
    (r"\bd=(\d+)", "output_size", int),
    (r"\b(\d+) blocks", "num_blocks", int),
    (r"\b(\d+) heads", "attention_heads", int),
    (r"\bFFN (\d+)", "linear_units", int),
    (r"\bconv kernel (\d+)", "cnn_module_kernel", int),
    (r"\b(\d+) epochs", "max_epoch", int),
    (r"\bbeam (\d+)", "beam_size", int),
    (r"enhanced labels from block (\d+)", "label_layer", int),
]


@pytest.mark.parametrize("corpus", CORPORA)
def test_readme_config_table_matches_the_configs_and_run_sh(corpus):
    """Each row of the "Configs" table says what its config holds: sizes, epochs, schedule,
    attention, backticked ``key: value`` pairs; "(default)" marks exactly run.sh's defaults."""
    defaults = _run_sh_defaults(corpus)
    marked = set()
    rows = [line for line in _readme(corpus).splitlines() if re.match(r"^\| `[^`]+\.yaml`", line)]
    assert rows
    for row in rows:
        first, what = [c.strip() for c in row.strip("|").split("|")[:2]]
        mention = re.match(r"`([^`]+)`", first).group(1)
        paths = _resolve(corpus, mention)
        assert len(paths) == 1, (corpus, mention)
        cfg = _yaml(paths[0])
        if "(default)" in first:
            marked.add(paths[0].resolve())
        for pattern, key, cast in TABLE_FACTS:
            for m in re.finditer(pattern, what):
                assert cast(m.group(1)) in _lookup(cfg, key), (corpus, mention, m.group(0), _lookup(cfg, key))
        for key, value in re.findall(r"`(\w+): ([^`]+)`", what):
            assert yaml.safe_load(value) in _lookup(cfg, key), (corpus, mention, key, value)
        if "windowed attention" in what:
            assert cfg["encoder"] == "windowed_conformer", (corpus, mention)
        if "full attention" in what:
            assert cfg["encoder"] != "windowed_conformer", (corpus, mention)
        if "tri-stage lr" in what:
            assert cfg["scheduler"] == "tristagelr", (corpus, mention)
        if "warm-up lr" in what:
            assert cfg["scheduler"] == "warmuplr", (corpus, mention)
        if "greedy" in what:
            assert cfg.get("ctc_greedy") is True, (corpus, mention)
    expected = {_resolve(corpus, defaults[k])[0].resolve()
                for k in ("ssl_config", "asr_config", "inference_config")}
    assert marked == expected, (corpus, sorted(map(str, marked)), sorted(map(str, expected)))


@pytest.mark.parametrize("corpus", CORPORA)
def test_readme_batch_and_schedule_numbers_are_in_the_configs(corpus):
    """Every ```batch_bins` N``, ```batch_size` N``, ```max_steps: N``` claim and every
    "N epochs" in a README table is a value of a config the README names."""
    text = _readme(corpus)
    configs = _configs_of(corpus)

    def values(key):
        return set(itertools.chain.from_iterable(_lookup(c, key) for c in configs))

    for key in ("batch_bins", "batch_size", "max_steps", "warmup_steps"):
        for number in re.findall(rf"`{key}`\s+([\d,]+)|`{key}: ([\d,]+)`", text):
            number = int("".join(number).replace(",", ""))
            assert number in values(key), (corpus, key, number, sorted(values(key)))
    for line in text.splitlines():
        if line.startswith("|"):
            for epochs in re.findall(r"(\d+) epochs", line):
                assert int(epochs) in values("max_epoch") | values("final_epochs"), (corpus, line)


# phrases that name a schedule or an extra loss term, and when a config has it on
SCHEDULE_PHRASES = {
    "tau decay": lambda c: any(s != e for s, e in zip(_lookup(c, "tau_start"), _lookup(c, "tau_end"))),
    "gamma ramp": lambda c: any(g not in (None, "constant") for g in _lookup(c, "gamma_schedule")),
    "diversity": lambda c: any(float(w) > 0 for w in _lookup(c, "diversity_weight")),
}


@pytest.mark.parametrize("corpus", CORPORA)
def test_readme_names_only_schedules_the_configs_use(corpus):
    """A README that mentions tau decay, a gamma ramp or a diversity term either has a named
    config that uses it, or says in the same sentence that it is off (or an addition)."""
    configs = _configs_of(corpus)
    sentences = re.split(r"(?<=[.;:])\s+", " ".join(_readme(corpus).split()))
    for phrase, active in SCHEDULE_PHRASES.items():
        if any(active(c) for c in configs):
            continue
        for sentence in sentences:
            if phrase in sentence.lower():
                assert re.search(r"\b(off|constant|not|no|addition|disabled)\b", sentence), (corpus, sentence)


@pytest.mark.parametrize("corpus", CORPORA)
def test_readme_output_names_are_ssl_sh_names(corpus):
    """exp/ and token-list paths a README names are the ones ssl_asr.sh derives from run.sh's
    settings: exp/ssl_<ssl config>/valid.<first criterion>.ave.pth, exp/asr_<asr config>_
    <ssl tag|init_<dir>|scratch>_bpe<nbpe>, the stats, n-gram and token-list directories."""
    from espnet2_birq.bin.check_init import checkpoint_name

    defaults = _run_sh_defaults(corpus)
    text = re.sub(r"(?<!\w)(sdm|<mic>)(?=[/_])", "ihm", _readme(corpus))  # AMI: one condition stands for both
    named = [p for ps in _named_configs(corpus).values() for p in ps]
    ssl_tags = {p.stem: p for p in named if p.name.startswith("train_ssl_")}
    asr_tags = {p.stem for p in named if p.name.startswith(("train_asr_", "train_bljust_"))}
    nbpe = defaults["nbpe"]
    exp = "exp/ihm" if corpus == "ami" else "exp"
    tokens = "data/ihm_token_list" if corpus == "ami" else "data/token_list"
    checked = 0
    for path in re.findall(r"`((?:\.\./)*[\w./-]*(?:exp|data)/[^`\s]*)`", text):
        if "<" in path or "*" in path or path.startswith("../"):
            continue  # a placeholder, a glob, another recipe's directory
        parts = path.rstrip("/").split("/")
        depth = 2 if corpus == "ami" and parts[0] == "exp" else 1
        if len(parts) <= depth:
            continue  # the directory itself (exp/ihm/)
        name = parts[depth]
        if parts[0] == "data" and "token_list" in path:
            assert path.startswith(f"{tokens}/bpe_unigram{nbpe}"), (corpus, path)
        elif name.startswith("ssl_stats_"):
            assert path.startswith(f"{exp}/ssl_stats_{defaults['feats_type']}"), (corpus, path)
        elif name.startswith("asr_stats_"):
            assert path.startswith(f"{exp}/asr_stats_fbank_bpe{nbpe}"), (corpus, path)
        elif name.startswith("ssl_"):
            assert path.startswith(f"{exp}/"), (corpus, path)
            assert name[4:] in ssl_tags, (corpus, path)
            if len(parts) > parts.index(name) + 1 and parts[-1].endswith(".pth"):
                assert parts[-1] == checkpoint_name(ssl_tags[name[4:]]), (corpus, path)
        elif name.startswith("asr_"):
            assert path.startswith(f"{exp}/"), (corpus, path)
            assert re.fullmatch(
                rf"asr_({'|'.join(asr_tags)})_({'|'.join(ssl_tags)}|init_\w+|scratch)_bpe{nbpe}", name), (corpus, path)
            for sub in parts[parts.index(name) + 1:]:
                if sub.startswith("decode_"):
                    tag = Path(defaults["inference_config"]).stem + "_asr_model_valid.cer_ctc.ave"
                    if defaults.get("use_ngram") == "true":
                        tag += f"_ngram_ngram_bpe_unigram{nbpe}_{defaults['ngram_num']}gram"
                    assert sub == tag, (corpus, path, tag)
        elif name.startswith("ngram_"):
            assert path.startswith(f"{exp}/ngram_bpe_unigram{nbpe}"), (corpus, path)
            for sub in parts[parts.index(name) + 1:]:
                assert re.fullmatch(rf"{defaults['ngram_num']}gram\.(arpa|bin|\{{arpa,bin\}})", sub), (corpus, path)
        else:
            continue
        checked += 1
    assert checked or corpus == "yodas"
