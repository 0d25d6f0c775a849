"""The recipe engine's names: ssl_asr.sh (not ESPnet's egs2/TEMPLATE/ssl1/ssl.sh, a different
script), and its options that mean the same as in ESPnet's egs2/TEMPLATE/asr1/asr.sh carry
asr.sh's names. Old names are gone: passing one is an error naming it."""

import re

import pytest

from tests.test_recipe import REPO_ROOT, SETS, fake_python, make_recipe, run_ssl, write_text_dir

# Options renamed to asr.sh's name: old name -> asr.sh's name
RENAMED = {
    "pretrained": "pretrained_model",
    "inference_model": "inference_asr_model",
    "lm_inference_model": "inference_lm",
    "global_cmvn": "feats_normalize",
}
# asr.sh's stage-group flags, mapped onto this engine's stages
SKIP_FLAGS = {
    "skip_data_prep": (1, 2, 3),
    "skip_train": (4, 5, 6),
    "skip_eval": (7, 8),
    "skip_upload_hf": (10,),
}

# The options of ESPnet's asr.sh (egs2/TEMPLATE/asr1/asr.sh) that could clash with ours.
ASR_SH_OPTIONS = set("""
    stage stop_stage skip_data_prep skip_train skip_eval skip_upload skip_upload_hf ngpu num_nodes
    nj inference_nj gpu_inference dumpdir expdir python local_data_opts speed_perturb_factors
    feats_type audio_format fs min_wav_duration max_wav_duration token_type nbpe bpemode oov blank
    sos_eos bpe_input_sentence_size bpe_nlsyms bpe_char_cover use_ngram ngram_exp ngram_num use_lm
    lm_tag lm_exp lm_stats_dir lm_config lm_args num_splits_lm asr_task asr_tag asr_exp
    asr_stats_dir asr_config asr_args pretrained_model ignore_init_mismatch feats_normalize
    num_splits_asr hf_repo batch_size inference_tag inference_config inference_args inference_lm
    inference_ngram inference_asr_model download_model train_set valid_set test_sets bpe_train_text
    lm_train_text lm_dev_text lm_test_text nlsyms_txt cleaner g2p lang score_opts local_score_opts
    asr_speech_fold_length asr_text_fold_length lm_fold_length
""".split())

# Every engine option that asr.sh also has, reviewed to mean the same there, with a word
# its --help entry must contain (a spot check that the entry says what asr.sh's option does).
SAME_AS_ASR_SH = {
    "stage": "first stage", "stop_stage": "last stage", "ngpu": "GPUs", "num_nodes": "nodes",
    "nj": "feature extraction", "inference_nj": "decoding jobs", "gpu_inference": "decode on GPU",
    "dumpdir": "feature", "expdir": "experiment", "python": "interpreter",
    "local_data_opts": "local/data.sh", "speed_perturb_factors": "speed", "feats_type": "raw",
    "fs": "sampling rate", "min_wav_duration": "shorter", "max_wav_duration": "longer",
    "token_type": "char or bpe", "nbpe": "BPE vocabulary size", "bpemode": "sentencepiece model type",
    "bpe_char_cover": "character coverage", "use_ngram": "n-gram", "ngram_exp": "directory",
    "ngram_num": "order", "use_lm": "LM", "lm_tag": "experiment name", "lm_exp": "experiment dir",
    "lm_config": "lm_train", "lm_args": "lm_train", "asr_tag": "experiment name",
    "asr_exp": "experiment dir", "asr_config": "ASR config", "asr_args": "asr_train",
    "pretrained_model": "initialises the encoder", "feats_normalize": "global_mvn",
    "hf_repo": "Hub repository for the ASR model", "inference_tag": "decode dir",
    "inference_config": "decoding config", "inference_args": "asr_decode",
    "inference_lm": "LM model file", "inference_asr_model": "model file in the ASR exp dir",
    "train_set": "fine-tuning set", "valid_set": "validation set", "test_sets": "decode and score",
    "lm_train_text": "LM training text", "lm_dev_text": "LM validation text",
    **{flag: f"stages {stages[0]}-{stages[-1]}" if len(stages) > 1 else f"stage {stages[0]}"
       for flag, stages in SKIP_FLAGS.items()},
}

ENGINE = REPO_ROOT / "egs2" / "TEMPLATE" / "ssl1" / "ssl_asr.sh"


@pytest.fixture(scope="module")
def help_entries(tmp_path_factory):
    """--help as {option: its text, continuation lines included}."""
    recipe = make_recipe(tmp_path_factory.mktemp("help"))
    result = run_ssl(recipe, "--help")
    assert result.returncode == 0, result.stderr
    entries, name = {}, None
    for line in result.stdout.splitlines():
        m = re.match(r"^\s+--(\w+)\s*(.*)$", line)
        if m:
            name = m.group(1)
            entries[name] = m.group(2)
        elif name and re.match(r"^\s+#", line):
            entries[name] += " " + line.strip()
        else:
            name = None
    return entries


def test_engine_is_ssl_asr_sh_in_every_recipe():
    assert ENGINE.is_file() and not (ENGINE.parent / "ssl.sh").exists()
    for recipe in sorted((REPO_ROOT / "egs2").glob("*/ssl1")):
        if recipe.parent.name == "TEMPLATE":
            continue
        assert (recipe / "ssl_asr.sh").resolve() == ENGINE, recipe
        assert not (recipe / "ssl.sh").exists() and not (recipe / "ssl.sh").is_symlink(), recipe
        assert "./ssl_asr.sh" in (recipe / "run.sh").read_text(), recipe


def test_help_lists_asr_sh_names_and_no_old_name(help_entries):
    for new in [*RENAMED.values(), *SKIP_FLAGS]:
        assert new in help_entries, f"--{new} is not in --help"
        assert new in ASR_SH_OPTIONS
    for old in RENAMED:
        assert old not in help_entries, f"--{old} is still in --help"
    text = ENGINE.read_text()
    for old in RENAMED:
        assert not re.search(rf"--{old}\b(?!_)", text), f"ssl_asr.sh still mentions --{old}"


@pytest.mark.parametrize("old,value", [("pretrained", "none"), ("inference_model", "valid.acc.ave.pth"),
                                       ("lm_inference_model", "valid.loss.ave.pth"), ("global_cmvn", "false")])
def test_old_names_are_refused_by_name(tmp_path, old, value):
    recipe = make_recipe(tmp_path)
    result = run_ssl(recipe, *SETS, "--stage", "9", "--stop_stage", "8", f"--{old}", value)
    assert result.returncode != 0
    assert f"unknown option '--{old}'" in result.stderr, result.stderr


def test_names_shared_with_asr_sh_mean_the_same(help_entries):
    shared = set(help_entries) & ASR_SH_OPTIONS
    # a new engine option with an asr.sh name must be reviewed and added to SAME_AS_ASR_SH
    assert shared == set(SAME_AS_ASR_SH), shared ^ set(SAME_AS_ASR_SH)
    for name, words in SAME_AS_ASR_SH.items():
        assert words in help_entries[name], (name, help_entries[name])
    # --ngram_file is not asr.sh's --inference_ngram (a file name in --ngram_exp): its own name
    assert "inference_ngram" not in help_entries and "inference_ngram" in help_entries["ngram_file"]
    # --skip_stages stays for what no asr.sh flag says, and --help says so
    assert "--skip_* flags cannot say" in help_entries["skip_stages"]


@pytest.mark.parametrize("flag,first,last,skipped", [
    ("skip_data_prep", 3, 3, [3]),
    ("skip_train", 3, 5, [4, 5]),
    ("skip_eval", 7, 8, [7, 8]),
])
def test_skip_flags_skip_asr_sh_stage_groups(tmp_path, flag, first, last, skipped):
    recipe = make_recipe(tmp_path)
    py = fake_python(tmp_path)
    write_text_dir(recipe / "data" / "train", [("u1", "A")])
    result = run_ssl(recipe, *SETS, "--python", py, "--stage", first, "--stop_stage", last, f"--{flag}", "true")
    assert result.returncode == 0, result.stdout + result.stderr
    for n in skipped:
        assert f"Stage {n}" not in result.stdout, result.stdout
    if flag == "skip_train":
        assert "Stage 3" in result.stdout  # the data preparation stage still runs
