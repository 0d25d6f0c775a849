"""Tests for the recipe script egs2/TEMPLATE/ssl1/ssl_asr.sh and the mini_synth demo recipe.

The option and stage tests run ssl_asr.sh in a temporary recipe directory with a fake
``--python`` that records its arguments (no ESPnet import, a fraction of a second
each). ``test_demo_recipe_tiny_end_to_end`` runs the whole demo recipe (stages 1-8)
at its smallest size with the real tools (a few minutes on 2 CPU cores).
"""

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import fake_python_splitting

REPO_ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = REPO_ROOT / "egs2" / "TEMPLATE" / "ssl1"
SSL_SH = TEMPLATE / "ssl_asr.sh"
DEMO = REPO_ROOT / "egs2" / "mini_synth" / "ssl1"

SETS = ["--pretrain_set", "pretrain", "--train_set", "train", "--valid_set", "dev", "--test_sets", "dev test"]

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def make_recipe(root: Path, demo: bool = False) -> Path:
    """A recipe directory egs2/<corpus>/ssl1 under ``root`` linked like a real one."""
    recipe = root / "egs2" / "corpus" / "ssl1"
    recipe.mkdir(parents=True)
    (recipe / "ssl_asr.sh").symlink_to(SSL_SH)
    (recipe / "path.sh").symlink_to(TEMPLATE / "path.sh")
    (recipe / "cmd.sh").symlink_to(TEMPLATE / "cmd.sh")
    (recipe / "utils").symlink_to(REPO_ROOT / "utils")
    if demo:
        for name in ("run.sh", "db.sh", "conf", "local"):
            (recipe / name).symlink_to(DEMO / name)
    return recipe


def fake_python(root: Path, trains: bool = False) -> Path:
    """A stand-in interpreter: logs its arguments, writes --output files; with ``trains``,
    a training run also leaves the models its --output_dir should hold."""
    train_line = ('if [ "$1" = --output_dir ]; then mkdir -p "$2"; '
                  'touch "$2/latest.pth" "$2/valid.cer_ctc.ave.pth"; fi' if trains else ":")
    script = root / "fake_python"
    script.write_text(
        textwrap.dedent(
            """\
            #!/usr/bin/env bash
            echo "$*" >> "$(dirname "$0")/python_calls.txt"
            case "$*" in *"check_init name"*) echo valid.best_rq_acc.ave.pth ;; esac
            while [ $# -gt 0 ]; do
                if [ "$1" = --output ]; then printf '<blank>\\n<unk>\\nA\\n<sos/eos>\\n' > "$2"; fi
                TRAIN_LINE
                shift
            done
            """
        ).replace("TRAIN_LINE", train_line)
    )
    script.chmod(0o755)
    return script


def run_ssl(recipe: Path, *args, timeout=120, env=None):
    env = dict(os.environ if env is None else env)
    env.setdefault("cmd_backend", "local")
    return subprocess.run(
        ["./ssl_asr.sh", *[str(a) for a in args]],
        cwd=recipe,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def write_text_dir(path: Path, utts):
    path.mkdir(parents=True, exist_ok=True)
    (path / "text").write_text("".join(f"{u} {t}\n" for u, t in utts))
    (path / "utt2spk").write_text("".join(f"{u} {u}\n" for u, _ in utts))


def write_files(recipe: Path, names, content: str = "x\n") -> None:
    """Stand-ins for the prerequisite files of a stage (paths relative to ``recipe``)."""
    for name in names:
        (recipe / name).parent.mkdir(parents=True, exist_ok=True)
        (recipe / name).write_text(content)


def option_names(script: Path):
    """Option variables of ssl_asr.sh: assignments before help_message."""
    names = []
    for line in script.read_text().splitlines():
        if line.startswith("help_message="):
            break
        m = re.match(r"^([a-z_][a-z0-9_]*)=", line)
        if m:
            names.append(m.group(1))
    return names


# --------------------------------------------------------------------------
# Options
# --------------------------------------------------------------------------


def test_help_documents_every_option(tmp_path):
    recipe = make_recipe(tmp_path)
    result = run_ssl(recipe, "--help")
    assert result.returncode == 0, result.stderr
    names = option_names(SSL_SH)
    for required in ("stage", "stop_stage", "ngpu", "num_nodes", "nj", "inference_nj", "feats_type",
                     "token_type", "nbpe", "ssl_config", "asr_config", "inference_config",
                     "pretrained_model", "ssl_exp", "asr_exp", "python", "test_sets", "pretrain_set"):
        assert required in names
    for name in names:
        assert f"--{name} " in result.stdout or result.stdout.rstrip().endswith(f"--{name}"), name


def test_unknown_option_fails(tmp_path):
    recipe = make_recipe(tmp_path)
    result = run_ssl(recipe, *SETS, "--no_such_option", "1")
    assert result.returncode != 0
    assert "no_such_option" in result.stderr


def test_boolean_and_choice_options_are_checked(tmp_path):
    recipe = make_recipe(tmp_path)
    result = run_ssl(recipe, *SETS, "--use_lm", "maybe")
    assert result.returncode != 0 and "true or false" in result.stderr
    result = run_ssl(recipe, *SETS, "--feats_normalize", "utterance_mvn", "--stage", "9")
    assert result.returncode != 0 and "--feats_normalize must be global_mvn or config" in result.stderr
    result = run_ssl(recipe, *SETS, "--feats_type", "mfcc", "--stage", "9")
    assert result.returncode != 0 and "feats_type" in result.stderr
    result = run_ssl(recipe, "--stage", "9")  # no data sets given
    assert result.returncode != 0 and "--pretrain_set is required" in result.stderr


def test_positional_argument_fails(tmp_path):
    recipe = make_recipe(tmp_path)
    result = run_ssl(recipe, *SETS, "extra")
    assert result.returncode != 0
    assert "unexpected positional" in result.stderr


# --------------------------------------------------------------------------
# Stage selection, re-runs and prerequisites
# --------------------------------------------------------------------------


def test_only_the_selected_stage_runs_and_rerun_skips(tmp_path):
    recipe = make_recipe(tmp_path)
    py = fake_python(tmp_path)
    write_text_dir(recipe / "data" / "train", [("u1", "A A"), ("u2", "A")])
    result = run_ssl(recipe, *SETS, "--python", py, "--stage", "3", "--stop_stage", "3")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Stage 3" in result.stdout
    for other in (1, 2, 4, 5, 6, 7, 8):
        assert f"Stage {other}:" not in result.stdout
    calls = (tmp_path / "python_calls.txt").read_text().splitlines()
    assert len(calls) == 1 and "espnet2.bin.tokenize_text" in calls[0]
    assert "--token_type char" in calls[0] and "--add_symbol <blank>:0" in calls[0]
    tokens = recipe / "data" / "token_list" / "char" / "tokens.txt"
    assert tokens.read_text().splitlines()[0] == "<blank>"
    # Re-running a finished stage skips it.
    result = run_ssl(recipe, *SETS, "--python", py, "--stage", "3", "--stop_stage", "3")
    assert result.returncode == 0, result.stderr
    assert "already done, skipping" in result.stdout
    assert len((tmp_path / "python_calls.txt").read_text().splitlines()) == 1


def test_skip_stages(tmp_path):
    recipe = make_recipe(tmp_path)
    py = fake_python(tmp_path)
    write_text_dir(recipe / "data" / "train", [("u1", "A")])
    result = run_ssl(recipe, *SETS, "--python", py, "--stage", "3", "--stop_stage", "5", "--skip_stages", "4 5")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Stage 3" in result.stdout
    assert "Stage 4:" not in result.stdout and "Stage 5:" not in result.stdout


@pytest.mark.parametrize(
    "stage,missing,first",
    [
        (2, "data/pretrain/wav.scp", 1),
        (3, "data/train/text", 1),
        (5, "exp/ssl_stats_fbank/train/speech_shape", 4),
        (6, "data/token_list/char/tokens.txt", 3),
        (7, "exp/asr_train_asr_ctc_train_ssl_birq_conformer/config.yaml", 6),
        (8, "decode_ctc_greedy_asr_model_valid.loss.ave/dev/text", 7),
        (9, "exp/ssl_train_ssl_birq_conformer/valid.best_rq_acc.ave.pth", 5),
    ],
)
def test_missing_prerequisite_names_the_stage(tmp_path, stage, missing, first):
    recipe = make_recipe(tmp_path)
    (recipe / "conf").mkdir()
    for name in ("train_ssl_birq_conformer.yaml", "train_asr_ctc.yaml", "decode_ctc_greedy.yaml"):
        (recipe / "conf" / name).write_text("{}\n")
    py = fake_python(tmp_path)
    result = run_ssl(recipe, *SETS, "--python", py, "--stage", stage, "--stop_stage", stage)
    assert result.returncode != 0
    assert missing in result.stderr, result.stderr
    assert f"run --stage {first} first" in result.stderr, result.stderr


def test_upload_stage_needs_a_repository_and_the_archive(tmp_path):
    recipe = make_recipe(tmp_path)
    py = fake_python(tmp_path)
    # as asr.sh: stage 10 is skipped unless --skip_upload_hf false, and says so when given a repository
    result = run_ssl(recipe, *SETS, "--python", py, "--stage", "10", "--hf_repo", "me/asr")
    assert result.returncode == 0, result.stderr
    assert "Stage 10 skipped: nothing uploaded to me/asr" in result.stdout
    assert not (tmp_path / "python_calls.txt").exists()
    result = run_ssl(recipe, *SETS, "--python", py, "--stage", "10", "--skip_upload_hf", "false")
    assert result.returncode != 0
    assert "--skip_upload_hf false needs --hf_repo and/or --hf_ssl_repo" in result.stderr
    result = run_ssl(recipe, *SETS, "--python", py, "--stage", "10", "--skip_upload_hf", "false", "--hf_repo", "me/asr")
    assert result.returncode != 0
    assert "exp/asr_train_asr_ctc_train_ssl_birq_conformer/asr_train_asr_ctc_train_ssl_birq_conformer_valid.loss.ave.zip missing: run --stage 9 first" in result.stderr
    assert "Successfully finished" not in result.stdout


def test_raw_features_refuse_a_segmented_pretraining_set(tmp_path):
    recipe = make_recipe(tmp_path)
    data = recipe / "data" / "pretrain"
    data.mkdir(parents=True)
    (data / "wav.scp").write_text("rec1 /nonexistent/rec1.wav\n")
    (data / "segments").write_text("rec1-0001 rec1 0.00 1.50\n")
    py = fake_python(tmp_path)
    result = run_ssl(recipe, *SETS, "--python", py, "--feats_type", "raw",
                     "--stage", "2", "--stop_stage", "2")
    assert result.returncode != 0
    assert "segments" in result.stderr and "--feats_type fbank" in result.stderr, result.stderr


# --------------------------------------------------------------------------
# --fs and stage markers of configs
# --------------------------------------------------------------------------


def test_fs_in_khz_is_normalised(tmp_path):
    """--fs 16k is 16000 (as asr.sh accepts it): the tools and the stage markers get
    16000, so a run with --fs 16000 finds the work done; 44.1k is 44100; garbage fails."""
    recipe = make_recipe(tmp_path)
    script = tmp_path / "fake_python"
    script.write_text(textwrap.dedent("""\
        #!/usr/bin/env bash
        echo "$*" >> "$(dirname "$0")/python_calls.txt"
        out=; data=; prev=
        for a in "$@"; do
            [ "$prev" = --out_dir ] && out=$a; [ "$prev" = --data_dir ] && data=$a; prev=$a
        done
        case "$*" in *"extract_fbank merge"*) awk '{ print $1, "x.ark:1" }' "$data/utt2spk" > "$out/feats.scp" ;; esac
        """))
    script.chmod(0o755)
    for dset in ("pretrain", "train", "dev", "test"):
        write_text_dir(recipe / "data" / dset, [(f"{dset}1", "A")])
        (recipe / "data" / dset / "wav.scp").write_text(f"{dset}1 /nonexistent/{dset}1.wav\n")
    args = [*SETS, "--python", script, "--nj", "1", "--stage", "2", "--stop_stage", "2"]
    result = run_ssl(recipe, *args, "--fs", "16k")
    assert result.returncode == 0, result.stdout + result.stderr
    calls = [c for c in (tmp_path / "python_calls.txt").read_text().splitlines() if "extract_fbank --data_dir" in c]
    assert len(calls) == 4 and all("--fs 16000 " in c for c in calls), calls
    result = run_ssl(recipe, *args, "--fs", "16000")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("already done, skipping") == 4, result.stdout
    result = run_ssl(recipe, *args, "--fs", "44.1k")
    assert result.returncode == 0, result.stderr
    assert "was: option fs=16000" in result.stdout and "now: option fs=44100" in result.stdout
    calls = (tmp_path / "python_calls.txt").read_text()
    assert calls.count("--fs 44100 ") == 4
    for bad in ("16kHz", "16.0001k", "sixteen", "0", "8k8"):
        result = run_ssl(recipe, *args, "--fs", bad)
        assert result.returncode != 0, bad
        assert "--fs must be" in result.stderr, result.stderr


def test_raw_mode_gives_fs_to_the_frontend_and_to_fine_tuning(tmp_path):
    """--feats_type raw --fs 8k: the SSL collect_stats and training runs compute the
    features with --frontend_conf fs=8000 (the configs say 16000); k-means (a kmeans_ce
    loss) reads stage 2's checked wav.scp, whose other-rate recordings are resampled copies; the fine-tuning config is made with --fs 8000 (fine-tuning
    reads stage 2's fbank, made at --fs: ESPnet's asr_train with --input_size 80 has no
    frontend, so it gets no --frontend_conf)."""
    recipe = make_recipe(tmp_path)
    script = tmp_path / "fake_python"
    script.write_text(textwrap.dedent(f"""\
        #!/usr/bin/env bash
        [ "$1" = -c ] && exec {sys.executable} "$@"
        echo "$*" >> "$(dirname "$0")/python_calls.txt"
        case "$*" in *"check_init name"*) echo valid.best_rq_acc.ave.pth ;; *"kmeans wants"*) echo 8 ;; esac
        prev=
        for a in "$@"; do
            [ "$prev" = --out ] && touch "$a"
            if [ "$prev" = --output_dir ]; then
                mkdir -p "$a/train" "$a/valid"
                touch "$a/valid.best_rq_acc.ave.pth" "$a/train/feats_stats.npz"
                for s in train valid; do touch "$a/$s/speech_shape" "$a/$s/text_shape"; done
            fi
            prev=$a
        done
        """))
    script.chmod(0o755)
    (recipe / "conf").mkdir()
    for name in ("train_ssl_birq_conformer.yaml", "train_asr_ctc.yaml"):
        (recipe / "conf" / name).write_text("{}\n")
    write_files(recipe, ["data/token_list/char/tokens.txt"], "<blank>\n<unk>\nA\n<sos/eos>\n")
    write_files(recipe, [f"dump/raw/{s}/wav.scp" for s in ("pretrain", "dev")]
                + [f"dump/fbank/{s}/{f}" for s in ("train", "dev") for f in ("feats.scp", "text")], "u1 x\n")
    args = [*SETS, "--python", script, "--ngpu", "0", "--nj", "1", "--feats_type", "raw", "--fs", "8k"]
    result = run_ssl(recipe, *args, "--stage", "4", "--stop_stage", "5")
    assert result.returncode == 0, result.stdout + result.stderr
    # stage 6 reads the pre-trained model's config (the fake trainer writes none)
    write_files(recipe, ["exp/ssl_train_ssl_birq_conformer/config.yaml"], "encoder: conformer\n")
    result = run_ssl(recipe, *args, "--stage", "6", "--stop_stage", "6")
    assert result.returncode == 0, result.stdout + result.stderr
    calls = (tmp_path / "python_calls.txt").read_text().splitlines()
    stats = [c for c in calls if "espnet2_birq.bin.ssl_train --collect_stats true" in c]
    assert stats and all("--frontend_conf fs=8000 " in c for c in stats), stats
    train = [c for c in calls if "espnet2_birq.bin.ssl_train --config" in c]
    assert len(train) == 1 and "--frontend kaldi_fbank --frontend_conf fs=8000 " in train[0], train
    assert "dump/raw/pretrain/wav.scp,speech,sound" in train[0]
    kmeans = [c for c in calls if "espnet2_birq.bin.kmeans fit" in c or "espnet2_birq.bin.kmeans label" in c]
    assert len(kmeans) == 3, kmeans  # fit, then labels of pretrain and dev
    assert "--feats_scp dump/raw/pretrain/wav.scp --input wav --fs 8000 " in kmeans[0], kmeans
    finetune_config = [c for c in calls if "make_finetune_config" in c]
    assert len(finetune_config) == 1 and "--fs 8000 " in finetune_config[0], finetune_config
    asr = [c for c in calls if "espnet2_birq.bin.asr_train" in c]
    assert len(asr) == 1 and "--input_size 80" in asr[0] and "frontend" not in asr[0], asr


def config_fake_python(root: Path) -> Path:
    """Logs its arguments; ``-c`` code (the config digest) runs in the real interpreter;
    a training run leaves the model file stage 5 checks for."""
    script = root / "fake_python"
    script.write_text(textwrap.dedent(f"""\
        #!/usr/bin/env bash
        [ "$1" = -c ] && exec {sys.executable} "$@"
        echo "$*" >> "$(dirname "$0")/python_calls.txt"
        case "$*" in *"check_init name"*) echo valid.best_rq_acc.ave.pth ;; esac
        prev=
        for a in "$@"; do
            [ "$prev" = --output_dir ] && mkdir -p "$a" && touch "$a/valid.best_rq_acc.ave.pth"; prev=$a
        done
        """))
    script.chmod(0o755)
    return script


def test_config_markers_record_parsed_values(tmp_path):
    """A finished stage 5 records its config by value: comments, layout and key order
    change nothing; a changed value is refused with what to do; a marker of an older
    ssl_asr.sh (the config's bytes) is still accepted while the bytes are the same."""
    recipe = make_recipe(tmp_path)
    conf = recipe / "conf" / "train_ssl_birq_conformer.yaml"
    conf.parent.mkdir()
    conf.write_text("encoder: conformer\nencoder_conf:\n    num_blocks: 12\n    output_size: 256\nlr: 0.001\n")
    py = config_fake_python(tmp_path)
    write_files(recipe, ["exp/ssl_stats_fbank/train/speech_shape", "exp/ssl_stats_fbank/valid/speech_shape",
                         "exp/ssl_stats_fbank/train/feats_stats.npz", "dump/fbank/pretrain/feats.scp",
                         "dump/fbank/dev/feats.scp"])
    args = [*SETS, "--python", py, "--ngpu", "0", "--stage", "5", "--stop_stage", "5"]

    def trainings():
        return (tmp_path / "python_calls.txt").read_text().count("espnet2_birq.bin.ssl_train")

    result = run_ssl(recipe, *args)
    assert result.returncode == 0, result.stdout + result.stderr
    assert trainings() == 1
    marker = recipe / "exp" / "ssl_train_ssl_birq_conformer" / ".done"
    assert re.search(r"^config conf/train_ssl_birq_conformer\.yaml [0-9a-f]{32}$", marker.read_text(), re.M)

    # comments, blank lines, quoting, flow style and key order: not a change
    conf.write_text("# BiRQ, conformer encoder\n\nlr: 1.0e-3   # peak\n"
                    "encoder_conf: {output_size: 256, num_blocks: 12}\nencoder: 'conformer'\n")
    result = run_ssl(recipe, *args)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SSL pre-training exp/ssl_train_ssl_birq_conformer: already done, skipping" in result.stdout
    assert trainings() == 1

    # a value: refused, saying what changed and what to do
    conf.write_text(conf.read_text().replace("num_blocks: 12", "num_blocks: 6"))
    result = run_ssl(recipe, *args)
    assert result.returncode != 0
    assert "its inputs changed since exp/ssl_train_ssl_birq_conformer/.done was written" in result.stderr
    assert re.search(r"was: config conf/train_ssl_birq_conformer\.yaml [0-9a-f]{32}", result.stderr)
    assert "move exp/ssl_train_ssl_birq_conformer away or pass another --ssl_tag" in result.stderr
    assert trainings() == 1



# --------------------------------------------------------------------------
# Speed perturbation and duration filters (--speed_perturb_factors, --min/max_wav_duration)
# --------------------------------------------------------------------------


def test_speed_perturbation_and_duration_options_are_checked(tmp_path):
    recipe = make_recipe(tmp_path)
    result = run_ssl(recipe, *SETS, "--speed_perturb_factors", "0.9 fast", "--stage", "9")
    assert result.returncode != 0 and "--speed_perturb_factors entry must be a non-negative number (seconds or a factor), got 'fast'" in result.stderr
    result = run_ssl(recipe, *SETS, "--speed_perturb_factors", "0 1.1", "--stage", "9")
    assert result.returncode != 0 and "a factor must be positive, got '0'" in result.stderr
    result = run_ssl(recipe, *SETS, "--max_wav_duration", "20s", "--stage", "9")
    assert result.returncode != 0 and "--max_wav_duration must be a non-negative number" in result.stderr


def test_speed_perturbation_and_duration_filters_in_stages_1_and_2(tmp_path):
    """Stage 1 writes data/train_sp (sp0.9-/sp1.1- copies and the original), stage 2 leaves
    out the pre-training and fine-tuning utterances outside [0.4 s, 2.0 s] with a count in the
    log and their list, and extracts the perturbed audio at its new length."""
    import numpy as np
    import soundfile

    from espnet2_birq.features import num_frames

    recipe = make_recipe(tmp_path)
    (recipe / "local").mkdir()
    (recipe / "local" / "data.sh").write_text("#!/usr/bin/env bash\n# the data dirs are in place\n")
    durations = {"pretrain": {"s0-p1": 0.3, "s0-p2": 0.5, "s0-p3": 1.0, "s0-p4": 2.5},
                 "train": {"s1-t1": 0.3, "s1-t2": 1.0, "s1-t3": 2.5},
                 "dev": {"s2-d1": 0.3, "s2-d2": 2.5}, "test": {"s3-e1": 1.0}}
    rng = np.random.default_rng(0)
    for dset, utts in durations.items():
        d = recipe / "data" / dset
        d.mkdir(parents=True)
        for utt, sec in utts.items():
            t = np.arange(int(sec * 16000)) / 16000
            soundfile.write(tmp_path / f"{utt}.wav", 0.3 * np.sin(2 * np.pi * 440 * t)
                            + 0.01 * rng.standard_normal(len(t)), 16000, subtype="PCM_16")
        (d / "wav.scp").write_text("".join(f"{u} {tmp_path / u}.wav\n" for u in utts))
        (d / "utt2spk").write_text("".join(f"{u} {u.split('-')[0]}\n" for u in utts))
        (d / "spk2utt").write_text(f"{next(iter(utts)).split('-')[0]} {' '.join(utts)}\n")
        if dset != "pretrain":
            (d / "text").write_text("".join(f"{u} A\n" for u in utts))
    env = dict(os.environ, PATH=str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"])
    args = [*SETS, "--python", "python3", "--nj", "1", "--stage", "1", "--stop_stage", "2",
            "--speed_perturb_factors", "0.9 1.0 1.1", "--min_wav_duration", "0.4", "--max_wav_duration", "2.0"]
    result = run_ssl(recipe, *args, env=env, timeout=600)
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-3000:])
    # Stage 1: the perturbed copies, Kaldi's ids and durations
    sp = recipe / "data" / "train_sp"
    wav_scp = dict(line.split(" ", 1) for line in (sp / "wav.scp").read_text().splitlines())
    assert sorted(wav_scp) == sorted(f"{p}s1-t{i}" for p in ("", "sp0.9-", "sp1.1-") for i in (1, 2, 3))
    assert wav_scp["sp0.9-s1-t2"] == f"python3 -m espnet2_birq.bin.speed_perturb 0.9 {tmp_path}/s1-t2.wav |"
    assert wav_scp["s1-t2"] == f"{tmp_path}/s1-t2.wav"
    assert "sp1.1-s1-t2 sp1.1-s1" in (sp / "utt2spk").read_text().splitlines()
    utt2dur = dict(line.split() for line in (sp / "utt2dur").read_text().splitlines())
    assert utt2dur["sp0.9-s1-t2"] == "1.111" and utt2dur["sp1.1-s1-t3"] == "2.273" and utt2dur["s1-t1"] == "0.300"
    # Stage 2: the filters, counted in the log and listed
    out = result.stdout
    assert ("WARNING: 6 of 9 utterances of data/train_sp left out (shorter than 0.4 s or longer than 2.0 s), "
            "listed in dump/filtered/train_sp/removed_by_duration") in out, out
    assert "WARNING: 2 of 4 utterances of data/pretrain left out" in out
    removed = dict(line.split() for line in (recipe / "dump" / "filtered" / "train_sp" / "removed_by_duration").read_text().splitlines())
    assert removed == {"s1-t1": "0.300", "s1-t3": "2.500", "sp0.9-s1-t1": "0.333", "sp0.9-s1-t3": "2.778",
                       "sp1.1-s1-t1": "0.273", "sp1.1-s1-t3": "2.273"}
    frames = dict(line.split() for line in (recipe / "dump" / "fbank" / "train_sp" / "utt2num_frames").read_text().splitlines())
    # the perturbed audio lasts 1/factor as long: round(16000 / factor) samples
    assert frames == {"s1-t2": str(num_frames(16000, 16000)), "sp0.9-s1-t2": str(num_frames(17778, 16000)),
                      "sp1.1-s1-t2": str(num_frames(14545, 16000))}
    assert (recipe / "dump" / "fbank" / "train_sp" / "text").read_text() == "s1-t2 A\nsp0.9-s1-t2 A\nsp1.1-s1-t2 A\n"
    pretrain = [line.split()[0] for line in (recipe / "dump" / "fbank" / "pretrain" / "feats.scp").read_text().splitlines()]
    assert pretrain == ["s0-p2", "s0-p3"]
    # the validation and test sets are never filtered
    assert len((recipe / "dump" / "fbank" / "dev" / "feats.scp").read_text().splitlines()) == 2
    # A re-run skips the finished work and still reports the filters.
    result = run_ssl(recipe, *args, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "speed perturbation data/train_sp: already done, skipping" in result.stdout
    assert "fbank train_sp: already done, skipping" in result.stdout
    assert "WARNING: 6 of 9 utterances of data/train_sp left out" in result.stdout


# --------------------------------------------------------------------------
# BL-JUST mode (--train_mode bljust)
# --------------------------------------------------------------------------


def test_bljust_mode_options_are_checked(tmp_path):
    recipe = make_recipe(tmp_path)
    result = run_ssl(recipe, *SETS, "--train_mode", "joint", "--stage", "9")
    assert result.returncode != 0 and "--train_mode must be pretrain_finetune or bljust" in result.stderr
    result = run_ssl(recipe, *SETS, "--train_mode", "bljust", "--feats_type", "raw", "--stage", "9")
    assert result.returncode != 0
    assert "--train_mode bljust needs --feats_type fbank" in result.stderr
    result = run_ssl(recipe, *SETS, "--train_mode", "bljust", "--freeze_encoder_epochs", "2",
                     "--stage", "9")
    assert result.returncode != 0 and "--freeze_encoder_epochs applies to fine-tuning" in result.stderr


def test_bljust_mode_skips_stage_5_and_trains_jointly_in_stage_6(tmp_path):
    """Stage 6 calls bljust_train with the labelled train set and the unlabelled pretrain set."""
    recipe = make_recipe(tmp_path)
    (recipe / "conf").mkdir()
    (recipe / "conf" / "train_bljust_conformer.yaml").write_text("{}\n")
    py = fake_python(tmp_path)
    needed = [
        "data/token_list/char/tokens.txt",
        "exp/asr_stats_fbank_char/train/text_shape.char",
        "exp/ssl_stats_fbank/train/speech_shape",
        "exp/ssl_stats_fbank/train/feats_stats.npz",
    ] + [f"dump/fbank/{s}/feats.scp" for s in ("train", "dev", "pretrain")]
    write_files(recipe, needed)
    result = run_ssl(recipe, *SETS, "--python", py, "--ngpu", "0", "--train_mode", "bljust",
                     "--stage", "5", "--stop_stage", "6", "--bljust_args", "--max_epoch 3")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Stage 5: skipped (--train_mode bljust" in result.stdout
    calls = (tmp_path / "python_calls.txt").read_text()
    assert "espnet2_birq.bin.ssl_train" not in calls
    train = [c for c in calls.splitlines() if "espnet2_birq.bin.bljust_train" in c]
    assert len(train) == 1, calls
    call = train[0]
    assert "--config conf/train_bljust_conformer.yaml" in call
    assert "--output_dir exp/asr_train_bljust_conformer_scratch" in call
    assert "--train_data_path_and_name_and_type dump/fbank/train/feats.scp,speech,kaldi_ark" in call
    assert "--unlabelled_data_path_and_name_and_type dump/fbank/pretrain/feats.scp,speech,kaldi_ark" in call
    assert "--unlabelled_shape_file exp/ssl_stats_fbank/train/speech_shape" in call
    assert "--normalize_conf stats_file=exp/ssl_stats_fbank/train/feats_stats.npz" in call
    assert call.rstrip().endswith("--max_epoch 3") and "--init_param" not in call
    assert (recipe / "exp" / "asr_train_bljust_conformer_scratch" / ".done").is_file()
    # a marker that records no inputs is not "changed" on the next run: it is skipped
    again = run_ssl(recipe, *SETS, "--python", py, "--ngpu", "0", "--train_mode", "bljust",
                    "--stage", "6", "--stop_stage", "6", "--bljust_args", "--max_epoch 3")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "BL-JUST training exp/asr_train_bljust_conformer_scratch: already done, skipping" in again.stdout
    assert "inputs changed" not in again.stdout
    calls = (tmp_path / "python_calls.txt").read_text()
    assert len([c for c in calls.splitlines() if "espnet2_birq.bin.bljust_train" in c]) == 1


def test_frozen_encoder_phase_keeps_its_length_under_user_max_epoch(tmp_path):
    """--freeze_encoder_epochs N trains N frozen epochs even when --asr_args sets --max_epoch.

    The frozen phase's options must come after --asr_args (argparse keeps the last value):
    with them first, a user's --max_epoch 8 silently made the frozen phase 8 epochs long.
    """
    recipe = make_recipe(tmp_path)
    (recipe / "conf").mkdir()
    (recipe / "conf" / "train_asr.yaml").write_text("{}\n")
    (recipe / "conf" / "train_ssl_birq_conformer.yaml").write_text("{}\n")
    py = fake_python(tmp_path, trains=True)
    needed = [
        "data/token_list/char/tokens.txt",
        "exp/asr_stats_fbank_char/train/text_shape.char",
        "exp/ssl_stats_fbank/train/feats_stats.npz",
    ] + [f"dump/fbank/{s}/feats.scp" for s in ("train", "dev")]
    write_files(recipe, needed)
    result = run_ssl(recipe, *SETS, "--python", py, "--ngpu", "0", "--stage", "6", "--stop_stage", "6",
                     "--pretrained_model", "none", "--asr_config", "conf/train_asr.yaml",
                     "--ssl_config", "conf/train_ssl_birq_conformer.yaml",
                     "--freeze_encoder_epochs", "2", "--asr_args", "--max_epoch 8 --seed 3")
    assert result.returncode == 0, result.stdout + result.stderr
    train = [c for c in (tmp_path / "python_calls.txt").read_text().splitlines()
             if "espnet2_birq.bin.asr_train" in c]
    assert len(train) == 2, train
    frozen, unfrozen = train
    assert "/frozen " in frozen and frozen.rstrip().endswith("--freeze_param encoder --max_epoch 2"), frozen
    assert "--seed 3" in frozen
    assert "--freeze_param" not in unfrozen and "--max_epoch 8" in unfrozen and "--max_epoch 2" not in unfrozen
    assert "/frozen/latest.pth" in unfrozen


# --------------------------------------------------------------------------
# The demo recipe, end to end, smallest size
# --------------------------------------------------------------------------


def test_demo_recipe_tiny_end_to_end(tmp_path):
    # the demo's speech synthesiser is the `demo` extra (make test installs it)
    pytest.importorskip("espeakng_loader", reason="needs the demo extra: pip install -e '.[demo]'")
    recipe = make_recipe(tmp_path, demo=True)
    env = dict(os.environ)
    env["cmd_backend"] = "local"
    env.pop("MINI_SYNTH", None)
    # Use the interpreter running the tests (its environment has espnet2_birq).
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    result = subprocess.run(
        ["./run.sh", "--demo_size", "tiny", "--python", "python3"],
        cwd=recipe, capture_output=True, text=True, timeout=900, env=env,
    )
    assert result.returncode == 0, (result.stdout[-5000:], result.stderr[-5000:])
    results = list((recipe / "exp").glob("asr_*/RESULTS.md"))
    assert len(results) == 1, results
    text = results[0].read_text()
    assert "|dataset|Snt|Wrd|Corr|Sub|Del|Ins|Err|S.Err|" in text
    assert "### WER" in text and "### CER" in text
    exp = results[0].parent
    for dset in ("dev", "test"):
        for metric in ("wer", "cer"):
            found = list(exp.glob(f"decode_*/{dset}/score_{metric}/result.txt"))
            assert len(found) == 1, (dset, metric, found)
            assert "Sum/Avg" in found[0].read_text() or "Scores:" in found[0].read_text()
    assert "|dataset|Snt|Wrd|" in result.stdout  # the table is printed
    # the demo decodes with its character LM, trained in stage 6 on the labelled and the
    # text-only LM data (local/data.sh stage 3)
    lm_exp = recipe / "exp" / "lm_train_lm_rnn_tiny"
    assert (lm_exp / "valid.loss.ave.pth").exists()
    assert "1epoch results" in (lm_exp / "train.log").read_text()
    assert len((lm_exp / "data" / "train.txt").read_text().splitlines()) > 200
    decodes = [p.name for p in exp.glob("decode_*")]
    assert decodes == ["decode_ctc_lm_asr_model_valid.cer_ctc.ave_lm_lm_train_lm_rnn_tiny_valid.loss.ave"], decodes
    assert "language model: exp/lm_train_lm_rnn_tiny/valid.loss.ave.pth" in text
    # bench/label_information.py on this recipe's models (its smoke test): every target
    # gets a row, with k-means labels of a small fit on the pre-training features
    fit = subprocess.run(
        [sys.executable, "-m", "espnet2_birq.bin.kmeans", "fit", "--ssl_config", "conf/train_ssl_birq_tiny.yaml",
         "--feats_scp", "dump/fbank/pretrain/feats.scp", "--cmvn_stats", "exp/ssl_stats_fbank/train/feats_stats.npz",
         "--out", "exp/kmeans_probe.pkl", "--num_clusters", "8", "--sample_utts", "20", "--n_init", "1"],
        cwd=recipe, capture_output=True, text=True, timeout=300, env=env)
    assert fit.returncode == 0, fit.stderr[-3000:]
    info = subprocess.run(
        [sys.executable, str(REPO_ROOT / "bench" / "label_information.py"), "--birq_exp", "exp/ssl_train_ssl_birq_tiny",
         "--asr_exp", str(exp.relative_to(recipe)), "--kmeans", "exp/kmeans_probe.pkl", "--sets", "dev", "test"],
        cwd=recipe, capture_output=True, text=True, timeout=300, env=env)
    assert info.returncode == 0, info.stderr[-3000:]
    assert re.search(r"\d+ character frames of 24 utterances \(dev test\)", info.stdout), info.stdout
    for target in ("anchor", "enhanced", "enhanced, untrained", "k-means"):
        assert re.search(rf"^\| {target} \| \d+ \| \d\.\d{{3}} \|", info.stdout, re.M), (target, info.stdout)
    assert "MI between the anchoring and the enhanced labels" in info.stdout
    # Stage 6 started from the pre-trained encoder, every tensor of it (checked by
    # check_init before training; ESPnet's --init_param alone says nothing when it
    # loads nothing).
    output = result.stdout + result.stderr
    loaded = re.search(r"pre-trained encoder verified: all (\d+) encoder tensors load from (\S+)", output)
    assert loaded, output[-3000:]
    assert int(loaded.group(1)) > 50 and loaded.group(2).endswith("valid.best_rq_acc.ave.pth")
    assert "--init_param" in (exp / "train.log").read_text()
    # Re-running the finished recipe is safe: stages 5-7 are skipped.
    result = subprocess.run(
        ["./run.sh", "--demo_size", "tiny", "--python", "python3", "--stage", "5", "--stop_stage", "7"],
        cwd=recipe, capture_output=True, text=True, timeout=300, env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("already done, skipping") >= 5  # ssl, lm, asr, dev, test
    assert "LM training exp/lm_train_lm_rnn_tiny: already done" in result.stdout
    # BL-JUST on the same data (stages 1-4 reused): one joint stage 6, then stages 7-8
    # decode its model with ESPnet's inference unchanged.
    result = subprocess.run(
        ["./run.sh", "--demo_size", "tiny", "--python", "python3", "--stage", "5",
         "--train_mode", "bljust"],
        cwd=recipe, capture_output=True, text=True, timeout=600, env=env,
    )
    assert result.returncode == 0, (result.stdout[-5000:], result.stderr[-5000:])
    assert "Stage 5: skipped (--train_mode bljust" in result.stdout
    exp = recipe / "exp" / "asr_train_bljust_tiny_scratch"
    log = (exp / "train.log").read_text()
    assert "espnet2_birq.bin.bljust_train" in log and "2epoch results" in log
    assert re.search(r"1epoch results: \[train\] .*loss_ssl=.*phase=", log)
    text = (exp / "RESULTS.md").read_text()
    assert "BL-JUST" in text and "### CER" in text
    for dset in ("dev", "test"):
        assert len(list(exp.glob(f"decode_*/{dset}/score_cer/result.txt"))) == 1, dset


def test_demo_size_anywhere_and_switching_sizes(tmp_path):
    """run.sh of the demo: --demo_size in any position; a size switch is refused with
    advice the run.sh options can follow (--demo_reset true)."""
    recipe = tmp_path / "egs2" / "mini_synth" / "ssl1"
    recipe.mkdir(parents=True)
    for name in ("run.sh", "db.sh", "conf", "local"):
        (recipe / name).symlink_to(DEMO / name)
    (recipe / "ssl_asr.sh").write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$@" > ssl_args.txt\n')
    (recipe / "ssl_asr.sh").chmod(0o755)
    env = dict(os.environ, MINI_SYNTH=str(tmp_path / "audio"))

    def run(*args):
        return subprocess.run(["./run.sh", *args], cwd=recipe, capture_output=True, text=True,
                              timeout=60, env=env)

    def ssl_args():
        return (recipe / "ssl_args.txt").read_text().splitlines()

    result = run("--stage", "3", "--demo_size", "tiny")
    assert result.returncode == 0, result.stderr
    args = ssl_args()
    assert args[args.index("--stage") + 1] == "3"
    opts = args[args.index("--local_data_opts") + 1]
    assert "--num_pretrain 120" in opts and f"--audio_dir {tmp_path / 'audio'}/tiny" in opts
    assert "--demo_size" not in args
    result = run("--stop_stage", "2", "--demo_size=tiny")
    assert result.returncode == 0, result.stderr
    # Switching size on a directory that holds the tiny demo: refused, nothing removed.
    (recipe / "dump").mkdir()
    (recipe / "ssl_args.txt").unlink()
    result = run("--stage", "5")
    assert result.returncode != 0
    assert "hold the tiny demo" in result.stderr and "--demo_reset true" in result.stderr
    assert (recipe / "dump").is_dir() and not (recipe / "ssl_args.txt").exists()
    # Following the advice works.
    result = run("--stage", "5", "--demo_reset", "true")
    assert result.returncode == 0, result.stderr
    assert not (recipe / "dump").exists()
    assert "--num_pretrain 4000" in ssl_args()[ssl_args().index("--local_data_opts") + 1]
    assert (recipe / "data" / ".demo_size").read_text().strip() == "default"


def test_stage_8_refuses_a_model_that_emits_only_blanks(tmp_path):
    """A set whose hypotheses are all empty is a failure, not a quiet 100% WER."""
    recipe = make_recipe(tmp_path)
    py = fake_python(tmp_path)
    decode = recipe / "exp" / "asr_train_asr_ctc_train_ssl_birq_conformer" / "decode_ctc_greedy_asr_model_valid.loss.ave"
    for dset in ("dev", "test"):
        (decode / dset).mkdir(parents=True)
        (decode / dset / "text").write_text("u1\nu2\n")
        ref = recipe / "dump" / "fbank" / dset
        ref.mkdir(parents=True)
        (ref / "text").write_text("u1 A B\nu2 C\n")
        (ref / "utt2spk").write_text("u1 s\nu2 s\n")
    result = run_ssl(recipe, *SETS, "--python", py, "--stage", "8", "--stop_stage", "8")
    assert result.returncode != 0
    assert "every hypothesis of dev" in result.stderr and "only blanks" in result.stderr
    assert "Successfully finished" not in result.stdout
    result = run_ssl(recipe, *SETS, "--python", py, "--stage", "8", "--stop_stage", "8", "--empty_hyps_ok", "true")
    assert result.returncode == 0, result.stderr
    assert "WARNING: every hypothesis of dev is empty" in result.stdout
    # one non-empty hypothesis is an ordinary (bad) result
    (decode / "dev" / "text").write_text("u1 A\nu2\n")
    (decode / "test" / "text").write_text("u1 A\nu2\n")
    assert run_ssl(recipe, *SETS, "--python", py, "--stage", "8", "--stop_stage", "8").returncode == 0


def lm_fake_python(root: Path) -> Path:
    """A stand-in interpreter for the LM steps: logs its arguments; aggregate_stats_dirs
    writes text_shape files, a launched lm_train its model, asr_decode a hypothesis."""
    script = root / "fake_python"
    script.write_text(textwrap.dedent("""\
        #!/usr/bin/env bash
        echo "$*" >> "$(dirname "$0")/python_calls.txt"
        out=; prev=
        for a in "$@"; do [ "$prev" = --output_dir ] && out=$a; prev=$a; done
        case "$*" in
            *"check_init name"*) echo valid.best_rq_acc.ave.pth ;;
            *aggregate_stats_dirs*)
                for s in train valid; do mkdir -p "$out/$s"; echo "lm1 7" > "$out/$s/text_shape"; done ;;
            *espnet2.bin.launch*espnet2.bin.lm_train*)
                mkdir -p "$out"; touch "$out/valid.loss.ave.pth" "$out/config.yaml" ;;
            *espnet2.bin.launch*asr_train*)
                mkdir -p "$out"; touch "$out/valid.cer_ctc.ave.pth" "$out/config.yaml" ;;
            *asr_decode*)
                mkdir -p "$out/1best_recog"; echo "u1 A" > "$out/1best_recog/text" ;;
        esac
        """))
    script.chmod(0o755)
    return script


def test_language_model_trained_in_stage_6_and_used_by_stage_7(tmp_path):
    """--use_lm true: stage 6 trains ESPnet's lm_train on --lm_train_text (ids unique,
    lines without text counted and left out), stage 7 decodes with it into a directory
    named after it, and a finished LM is not trained again."""
    recipe = make_recipe(tmp_path)
    result = run_ssl(recipe, *SETS, "--use_lm", "true", "--stage", "9")
    assert result.returncode != 0 and "--use_lm true needs --lm_config" in result.stderr
    result = run_ssl(recipe, *SETS, "--use_lm", "yes", "--stage", "9")
    assert result.returncode != 0 and "'--use_lm' expects true or false" in result.stderr

    conf = recipe / "conf"
    conf.mkdir()
    for name in ("train_asr.yaml", "train_ssl_birq_conformer.yaml", "train_lm.yaml", "decode_lm.yaml"):
        (conf / name).write_text("{}\n")
    py = lm_fake_python(tmp_path)
    needed = [
        "exp/asr_stats_fbank_char/train/text_shape.char",
        "exp/ssl_stats_fbank/train/feats_stats.npz",
    ] + [f"dump/fbank/{s}/feats.scp" for s in ("train", "dev", "test")]
    write_files(recipe, needed, "u1 x\n")
    tokens = recipe / "data" / "token_list" / "char" / "tokens.txt"
    tokens.parent.mkdir(parents=True)
    tokens.write_text("<blank>\n<unk>\n<space>\nA\nB\n<sos/eos>\n")
    write_text_dir(recipe / "data" / "train", [("u1", "A B"), ("u2", "")])
    write_text_dir(recipe / "data" / "dev", [("d1", "B A")])
    other = recipe / "data" / "local" / "other_text" / "text"
    other.parent.mkdir(parents=True)
    other.write_text("lm1 A A B\nlm2 B\n")
    common = [*SETS, "--python", py, "--ngpu", "0", "--pretrained_model", "none",
              "--asr_config", "conf/train_asr.yaml", "--ssl_config", "conf/train_ssl_birq_conformer.yaml",
              "--use_lm", "true", "--lm_config", "conf/train_lm.yaml",
              "--lm_train_text", "data/train/text data/local/other_text/text"]
    result = run_ssl(recipe, *common, "--stage", "6", "--stop_stage", "6", "--lm_args", "--max_epoch 2")
    assert result.returncode == 0, result.stdout + result.stderr
    lm_exp = recipe / "exp" / "lm_train_lm"
    assert (lm_exp / "data" / "train.txt").read_text() == "u1 A B\nlm1 A A B\nlm2 B\n"
    assert (lm_exp / "data" / "dev.txt").read_text() == "d1 B A\n"
    assert "WARNING: 1 line(s) without text in data/train/text data/local/other_text/text" in result.stdout
    assert (lm_exp / "stats" / "train" / "text_shape.char").read_text() == "lm1 7,6\n"
    calls = (tmp_path / "python_calls.txt").read_text().splitlines()
    stats = [c for c in calls if "espnet2.bin.lm_train --collect_stats true" in c]
    assert stats and "--train_data_path_and_name_and_type exp/lm_train_lm/data/train.txt,text,text" in stats[0]
    train = [c for c in calls if "espnet2.bin.launch" in c and "espnet2.bin.lm_train" in c]
    assert len(train) == 1, calls
    assert "--output_dir exp/lm_train_lm" in train[0] and "--token_list data/token_list/char/tokens.txt" in train[0]
    assert "--train_shape_file exp/lm_train_lm/stats/train/text_shape.char" in train[0]
    assert train[0].rstrip().endswith("--max_epoch 2")
    assert (lm_exp / ".done").is_file() and (lm_exp / "run.sh").is_file()

    # stage 7 decodes with it; the decode directory names the LM
    result = run_ssl(recipe, *common, "--stage", "7", "--stop_stage", "7", "--test_sets", "test",
                     "--inference_config", "conf/decode_lm.yaml")
    assert result.returncode == 0, result.stdout + result.stderr
    decode = [c for c in (tmp_path / "python_calls.txt").read_text().splitlines() if "asr_decode" in c]
    assert len(decode) == 1
    assert "--lm_train_config exp/lm_train_lm/config.yaml --lm_file exp/lm_train_lm/valid.loss.ave.pth" in decode[0]
    tag = "decode_lm_asr_model_valid.cer_ctc.ave_lm_lm_train_lm_valid.loss.ave"
    assert (recipe / "exp" / "asr_train_asr_scratch" / tag / "test" / "text").read_text() == "u1 A\n"

    # re-running stage 6 skips the finished LM (and ASR) training, also while another run
    # holds the LM directory's lock (a finished LM is shared by runs side by side); an LM
    # still to be trained is refused while another run holds its lock
    (recipe / "exp" / "lm_busy").mkdir()
    holders = [subprocess.Popen(["flock", str(recipe / "exp" / name / ".ssl_asr.sh.lock"), "sleep", "60"])
               for name in ("lm_train_lm", "lm_busy")]
    try:
        def held(name):  # the holder has the lock once a non-blocking flock of the file fails
            lock = recipe / "exp" / name / ".ssl_asr.sh.lock"
            return lock.exists() and subprocess.run(["flock", "-n", str(lock), "true"]).returncode != 0

        for _ in range(100):
            if held("lm_train_lm") and held("lm_busy"):
                break
            subprocess.run(["sleep", "0.1"])
        result = run_ssl(recipe, *common, "--stage", "6", "--stop_stage", "6", "--lm_args", "--max_epoch 2")
        assert result.returncode == 0, result.stdout + result.stderr
        assert "LM training exp/lm_train_lm: already done, skipping" in result.stdout
        busy = run_ssl(recipe, *common, "--stage", "6", "--stop_stage", "6", "--lm_tag", "busy")
        assert busy.returncode != 0 and "exp/lm_busy is in use by another run" in busy.stderr, busy.stderr
    finally:
        for holder in holders:
            holder.kill()
            holder.wait()
    calls = (tmp_path / "python_calls.txt").read_text().splitlines()
    assert len([c for c in calls if "espnet2.bin.launch" in c and "espnet2.bin.lm_train" in c]) == 1

    # ids must be unique across the LM text files: a repeated id is refused, naming it
    result = run_ssl(recipe, *common, "--stage", "6", "--stop_stage", "6", "--lm_tag", "dup",
                     "--lm_train_text", "data/train/text data/train/text")
    assert result.returncode != 0
    assert "the ids u1 occur more than once" in result.stderr, result.stderr


def ngram_fake_python(root: Path) -> Path:
    """A stand-in interpreter for the n-gram steps: logs its arguments; tokenize_text writes
    the text's words as tokens, kaldingram an ARPA header, asr_decode a hypothesis."""
    script = root / "fake_python"
    script.write_text(textwrap.dedent("""\
        #!/usr/bin/env bash
        echo "$*" >> "$(dirname "$0")/python_calls.txt"
        out=; inp=; lm=; prev=
        for a in "$@"; do
            case "$prev" in --output_dir|--output) out=$a ;; --input) inp=$a ;; --lm) lm=$a ;; esac
            prev=$a
        done
        case "$*" in
            *"check_init name"*) echo valid.best_rq_acc.ave.pth ;;
            *espnet2.bin.tokenize_text*) cut -d ' ' -f 2- "$inp" > "$out" ;;
            *"kaldingram.cli train"*) printf '\\\\data\\\\\\nngram 1=4\\nngram 2=3\\n\\n\\\\end\\\\\\n' > "$lm" ;;
            *asr_decode*) mkdir -p "$out/1best_recog"; echo "u1 A" > "$out/1best_recog/text" ;;
        esac
        """))
    script.chmod(0o755)
    return script


def test_ngram_trained_in_stage_6_and_used_by_stage_7(tmp_path):
    """--use_ngram true: stage 6 tokenises --lm_train_text with the token list and trains an
    n-gram over the tokens (kaldingram, or kenlm's lmplz + build_binary when on PATH), stage 7
    passes it to asr_decode as --ngram_file into a directory named after it; --ngram_file
    decodes with an external n-gram and trains none."""
    recipe = make_recipe(tmp_path)
    for bad, message in ((("--use_ngram", "yes"), "'--use_ngram' expects true or false"),
                         (("--ngram_num", "0"), "--ngram_num must be >= 1"),
                         (("--ngram_trainer", "srilm"), "--ngram_trainer must be auto, lmplz or kaldingram")):
        result = run_ssl(recipe, *SETS, *bad, "--stage", "9")
        assert result.returncode != 0 and message in result.stderr, result.stderr
    conf = recipe / "conf"
    conf.mkdir()
    for name in ("train_asr.yaml", "train_ssl_birq_conformer.yaml", "decode_ngram.yaml"):
        (conf / name).write_text("{}\n")
    py = ngram_fake_python(tmp_path)
    tokens = recipe / "data" / "token_list" / "char" / "tokens.txt"
    tokens.parent.mkdir(parents=True)
    tokens.write_text("<blank>\n<unk>\n<space>\nA\nB\n<sos/eos>\n")
    write_text_dir(recipe / "data" / "train", [("u1", "A B"), ("u2", "")])
    other = recipe / "data" / "local" / "other_text" / "text"
    other.parent.mkdir(parents=True)
    other.write_text("lm1 A A B\n")
    asr_exp = recipe / "exp" / "asr_train_asr_scratch"
    write_files(recipe, [f"dump/fbank/{s}/feats.scp" for s in ("train", "dev", "test")], "u1 x\n")
    write_files(recipe, ["exp/asr_train_asr_scratch/config.yaml", "exp/asr_train_asr_scratch/valid.cer_ctc.ave.pth"])
    (asr_exp / ".done").write_text("finished\n")  # a marker without recorded inputs: fine-tuning is done
    common = [*SETS, "--python", py, "--ngpu", "0", "--pretrained_model", "none",
              "--asr_config", "conf/train_asr.yaml", "--ssl_config", "conf/train_ssl_birq_conformer.yaml",
              "--use_ngram", "true", "--ngram_num", "4", "--test_sets", "test",
              "--inference_config", "conf/decode_ngram.yaml",
              "--lm_train_text", "data/train/text data/local/other_text/text"]
    env = dict(os.environ, PATH="/usr/bin:/bin")  # no lmplz: kaldingram
    result = run_ssl(recipe, *common, "--stage", "6", "--stop_stage", "7", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    ngram = recipe / "exp" / "ngram_char"
    assert (ngram / "data" / "train.txt").read_text() == "u1 A B\nlm1 A A B\n"
    assert (ngram / "data" / "train.tokens").read_text() == "A B\nA A B\n"
    assert "1-grams: 4 2-grams: 3" in result.stdout
    calls = (tmp_path / "python_calls.txt").read_text().splitlines()
    tok = [c for c in calls if "espnet2.bin.tokenize_text" in c]
    assert len(tok) == 1 and "--token_type char --bpemodel none" in tok[0] and "--field 2-" in tok[0]
    train = [c for c in calls if "kaldingram.cli train" in c]
    assert len(train) == 1 and "--ngram-order 4 --text exp/ngram_char/data/train.tokens" in train[0]
    decode = [c for c in calls if "asr_decode" in c]
    assert len(decode) == 1 and "--ngram_file exp/ngram_char/4gram.arpa" in decode[0]
    assert "--config conf/decode_ngram.yaml" in decode[0]
    tag = "decode_ngram_asr_model_valid.cer_ctc.ave_ngram_ngram_char_4gram"
    assert (asr_exp / tag / "test" / "text").read_text() == "u1 A\n"
    # a second run shares the finished n-gram
    result = run_ssl(recipe, *common, "--stage", "6", "--stop_stage", "6", env=env)
    assert result.returncode == 0 and "n-gram exp/ngram_char: already done, skipping" in result.stdout
    # kaldingram stops at order 5
    result = run_ssl(recipe, *common, "--stage", "6", "--stop_stage", "6", "--ngram_num", "6", env=env)
    assert result.returncode != 0 and "kaldingram trains n-grams up to order 5" in result.stderr
    # lmplz asked for but not installed: refused before any stage runs (not after fine-tuning)
    result = run_ssl(recipe, *common, "--stage", "1", "--ngram_trainer", "lmplz", env=env)
    assert result.returncode != 0 and "kenlm's lmplz is not on PATH" in result.stderr
    assert "Stage 1" not in result.stdout

    # kenlm's lmplz and build_binary on PATH: lmplz trains (auto), the binary is decoded with
    bin_dir = tmp_path / "kenlm_bin"
    bin_dir.mkdir()
    (bin_dir / "lmplz").write_text(textwrap.dedent("""\
        #!/usr/bin/env bash
        echo "lmplz $*" >> "$(dirname "$0")/calls.txt"
        while [ $# -gt 0 ]; do [ "$1" = --arpa ] && printf 'ngram 1=5\\n' > "$2"; shift; done
        """))
    (bin_dir / "build_binary").write_text(
        '#!/usr/bin/env bash\necho "build_binary $*" >> "$(dirname "$0")/calls.txt"; cp "$2" "$3"\n')
    for tool in ("lmplz", "build_binary"):
        (bin_dir / tool).chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}:/usr/bin:/bin")
    result = run_ssl(recipe, *common, "--stage", "6", "--stop_stage", "7", "--ngram_num", "3", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    kenlm_calls = (bin_dir / "calls.txt").read_text().splitlines()
    assert kenlm_calls[0].startswith("lmplz -o 3 -S 20% --discount_fallback -T exp/ngram_char/tmp")
    assert "--text exp/ngram_char/data/train.tokens --arpa exp/ngram_char/3gram.arpa.tmp" in kenlm_calls[0]
    assert kenlm_calls[1] == "build_binary -s exp/ngram_char/3gram.arpa exp/ngram_char/3gram.bin.tmp"
    decode = [c for c in (tmp_path / "python_calls.txt").read_text().splitlines() if "asr_decode" in c]
    assert "--ngram_file exp/ngram_char/3gram.bin" in decode[-1]
    assert (asr_exp / "decode_ngram_asr_model_valid.cer_ctc.ave_ngram_ngram_char_3gram" / "test" / "text").is_file()

    # an external n-gram: nothing trained, decoded with, the directory named after it
    n_calls = len((tmp_path / "python_calls.txt").read_text().splitlines())
    external = tmp_path / "4-gram.arpa"
    result = run_ssl(recipe, *common, "--stage", "6", "--stop_stage", "7", "--use_ngram", "false",
                     "--ngram_file", external, env=env)
    assert result.returncode != 0 and f"--ngram_file {external} not found" in result.stderr
    external.write_text("\\data\\\n")
    result = run_ssl(recipe, *common, "--stage", "6", "--stop_stage", "7", "--ngram_file", external, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "none trained, stage 7 decodes with --ngram_file" in result.stdout
    new_calls = (tmp_path / "python_calls.txt").read_text().splitlines()[n_calls:]
    assert not [c for c in new_calls if "tokenize_text" in c or "kaldingram" in c]
    assert [c for c in new_calls if "asr_decode" in c and f"--ngram_file {external}" in c]
    assert (asr_exp / "decode_ngram_asr_model_valid.cer_ctc.ave_ngram_4-gram" / "test" / "text").is_file()


def test_pretraining_lists_split_for_the_multiple_iterator(tmp_path):
    """--num_splits_ssl N: stage 5 splits the pre-training wav.scp, its shape file and the
    k-means labels alike with ESPnet's split_scps (run for real here) and trains with
    --multiple_iterator true on the parts (asr.sh's --num_splits_asr); lists with other
    utterances are refused."""
    recipe = make_recipe(tmp_path)
    result = run_ssl(recipe, *SETS, "--num_splits_ssl", "0", "--stage", "9")
    assert result.returncode != 0 and "--num_splits_ssl must be >= 1" in result.stderr
    conf = recipe / "conf"
    conf.mkdir()
    (conf / "ssl.yaml").write_text("{}\n")
    script = fake_python_splitting(tmp_path)
    utts = [f"u{i}" for i in range(5)]
    write_files(recipe, ["dump/raw/pretrain/wav.scp"], "".join(f"{u} /a/{u}.flac\n" for u in reversed(utts)))
    write_files(recipe, ["dump/raw/dev/wav.scp"], "d1 /a/d1.flac\n")
    write_files(recipe, ["exp/ssl_stats_raw/train/speech_shape"], "".join(f"{u} {1000 + i}\n" for i, u in enumerate(utts)))
    write_files(recipe, ["exp/ssl_stats_raw/valid/speech_shape"], "d1 1000\n")
    write_files(recipe, ["exp/ssl_stats_raw/train/feats_stats.npz"])
    common = [*SETS, "--python", script, "--ngpu", "0", "--feats_type", "raw", "--ssl_config", "conf/ssl.yaml",
              "--stage", "5", "--stop_stage", "5", "--num_splits_ssl", "2"]
    result = run_ssl(recipe, *common)
    assert result.returncode == 0, result.stdout + result.stderr
    split = recipe / "exp" / "ssl_stats_raw" / "splits2"
    assert (split / "wav.scp" / "num_splits").read_text() == "2"
    assert (split / "wav.scp" / "split.0").read_text() == "u0 /a/u0.flac\nu2 /a/u2.flac\nu4 /a/u4.flac\n"
    assert (split / "speech_shape" / "split.1").read_text() == "u1 1001\nu3 1003\n"
    launch = [c for c in (tmp_path / "python_calls.txt").read_text().splitlines() if "espnet2.bin.launch" in c]
    assert len(launch) == 1
    assert "--train_data_path_and_name_and_type exp/ssl_stats_raw/splits2/wav.scp,speech,sound" in launch[0]
    assert "--train_shape_file exp/ssl_stats_raw/splits2/speech_shape" in launch[0]
    assert "--multiple_iterator true" in launch[0]
    assert "--valid_data_path_and_name_and_type dump/raw/dev/wav.scp,speech,sound" in launch[0]
    # lists that disagree are not split (a new SSL tag: the first pre-training is done)
    write_files(recipe, ["exp/ssl_stats_raw/train/speech_shape"], "u0 1000\n")
    result = run_ssl(recipe, *common, "--ssl_tag", "other")
    assert result.returncode != 0 and "list other utterances" in result.stderr, result.stderr


def test_ssl_training_reads_split_lists_with_the_multiple_iterator(tmp_path):
    """The real trainer with ESPnet's --multiple_iterator on lists split by split_scps (what
    stage 5 runs with --num_splits_ssl 2): one epoch over both parts writes its model."""
    import numpy as np
    import kaldiio

    rng = np.random.default_rng(0)
    feats = {f"utt{i}": rng.standard_normal((int(rng.integers(90, 160)), 80)).astype(np.float32) for i in range(6)}
    with kaldiio.WriteHelper(f"ark,scp:{tmp_path}/feats.ark,{tmp_path}/feats.scp") as writer:
        for uid, array in sorted(feats.items()):
            writer(uid, array)
    (tmp_path / "speech_shape").write_text("".join(f"{u} {len(a)},80\n" for u, a in sorted(feats.items())))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    subprocess.run([sys.executable, "-m", "espnet2.bin.split_scps", "--num_splits", "2",
                    "--output_dir", str(tmp_path / "split"), "--scps", str(tmp_path / "feats.scp"),
                    str(tmp_path / "speech_shape")], check=True, capture_output=True, env=env)
    result = subprocess.run(
        [sys.executable, "-m", "espnet2_birq.bin.ssl_train", "--config", str(REPO_ROOT / "conf" / "train_ssl_birq_debug.yaml"),
         "--input_size", "80", "--output_dir", str(tmp_path / "exp"), "--ngpu", "0", "--max_epoch", "1",
         "--multiple_iterator", "true",
         "--train_data_path_and_name_and_type", f"{tmp_path}/split/feats.scp,speech,kaldi_ark",
         "--train_shape_file", f"{tmp_path}/split/speech_shape",
         "--valid_data_path_and_name_and_type", f"{tmp_path}/feats.scp,speech,kaldi_ark",
         "--valid_shape_file", f"{tmp_path}/speech_shape"],
        capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (tmp_path / "exp" / "1epoch.pth").is_file()
    assert "multiple_iterator: true" in (tmp_path / "exp" / "config.yaml").read_text()
    # one iterator per part, each reading its own part of the lists
    assert "Building 0th iter-factory" in result.stderr and "Building 1th iter-factory" in result.stderr
    assert "split/speech_shape/split.1" in result.stderr
