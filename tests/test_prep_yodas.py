"""Offline YODAS preparation tests on a miniature copy of the espnet/yodas
(v1) layout: data/<subset>/{audio/*.tar.gz,text/*.txt,duration/*.txt}."""

import io
import os
import subprocess
import sys
import tarfile
import types
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from espnet2_birq.dataprep import yodas
from espnet2_birq.utils.datadir import validate_data_dir
from espnet2_birq.dataprep.text import normalize_caption
from tests.conftest import fake_python_splitting

REPO = Path(__file__).resolve().parent.parent

# video ids are 11 chars and may contain/start with '-'
VIDEOS = ["2qU-GST3DuI", "-1bG1Ab5Erc", "aAj0KvWfh28", "kQDZgYW7KiE", "h9nBiv0fXVc",
          "Lyy-cIbMfMM", "w8M4pBuGjcy", "isHTONX1Uh8"]
CAPTIONS = ["Hello, World! It's 5 o'clock.", "[Music]", "café &amp; crème — “quoted” text",
            "(laughter) yes >> no", "OK. Let's go... 100%"]


def _wav_bytes(sec: float, seed: int) -> bytes:
    buf = io.BytesIO()
    t = np.arange(int(sec * 8000)) / 8000  # 8 kHz keeps the fixture small
    sf.write(buf, (0.1 * np.sin(2 * np.pi * (100 + seed) * t)).astype(np.float32), 8000,
             format="WAV", subtype="PCM_16")
    return buf.getvalue()


def make_yodas(root: Path, missing_audio=()):
    """en000: 2 shards, en001: 1 shard, en100 (automatic captions) ignored by auto."""
    plan = {("en000", "00000000"): VIDEOS[:3], ("en000", "00000001"): VIDEOS[3:6],
            ("en001", "00000000"): VIDEOS[6:], ("en100", "00000000"): VIDEOS[:1]}
    seed = 0
    for (subset, shard), vids in plan.items():
        base = root / "data" / subset
        for k in ("audio", "text", "duration"):
            (base / k).mkdir(parents=True, exist_ok=True)
        tlines, dlines = [], []
        with tarfile.open(base / "audio" / f"{shard}.tar.gz", "w:gz") as tf:
            for v in vids:
                for i in range(len(CAPTIONS)):
                    sec = 1.0 + 0.5 * i
                    start = int(i * 300)
                    utt = f"{v}-{i:05d}-{start:08d}-{start + int(sec * 100):08d}"
                    tlines.append(f"{utt} {CAPTIONS[i]}")
                    dlines.append(f"{utt} {sec:.2f}")
                    if utt in missing_audio:
                        continue
                    seed += 1
                    data = _wav_bytes(sec, seed)
                    info = tarfile.TarInfo(f"{shard}/{utt}.wav")
                    info.size = len(data)
                    tf.addfile(info, io.BytesIO(data))
        (base / "text" / f"{shard}.txt").write_text("\n".join(tlines) + "\n")
        (base / "duration" / f"{shard}.txt").write_text("\n".join(dlines) + "\n")
    return root


def _map(p: Path):
    return dict(line.split(" ", 1) for line in p.read_text().splitlines())


def test_normalize_caption():
    assert normalize_caption(CAPTIONS[0]) == "HELLO WORLD IT'S 5 O'CLOCK"
    assert normalize_caption(CAPTIONS[1]) == ""
    assert normalize_caption(CAPTIONS[2]) == "CAFE AND CREME QUOTED TEXT"
    assert normalize_caption(CAPTIONS[3]) == "YES NO"
    assert normalize_caption(CAPTIONS[4]) == "OK LET'S GO 100"


def test_video_id():
    assert yodas.video_id("2qU-GST3DuI-00000-00000000-00000200") == "2qU-GST3DuI"
    assert yodas.video_id("-1bG1Ab5Erc-00012-00000300-00000450") == "-1bG1Ab5Erc"


def test_prepare_splits_budget_and_text(tmp_path):
    root = make_yodas(tmp_path / "yodas")
    # per video: 4 usable utts (1 "[Music]" skipped): 1.0+2.0+2.5+3.0 = 8.5 s
    hours = yodas.prepare_yodas(root, tmp_path / "data", ["en000", "en001"],
                                hours=40 / 3600, finetune_hours=10 / 3600,
                                dev_hours=8 / 3600, test_hours=8 / 3600)
    d = tmp_path / "data"
    sets = {}
    for name in ("pretrain", "finetune", "dev", "test"):
        validate_data_dir(d / name)
        sets[name] = set(_map(d / name / "utt2spk"))
    # budget: 56 s requested -> utterances taken in order until >= 56 s
    pool = set().union(sets["pretrain"], sets["dev"], sets["test"])
    total = sum(float(v) for n in ("pretrain", "dev", "test")
                for v in _map(d / n / "utt2dur").values())
    assert 56 <= total < 56 + 3.0
    assert not sets["pretrain"] & sets["dev"] and not sets["dev"] & sets["test"]
    assert sets["finetune"] <= sets["pretrain"]
    vids = {n: {yodas.video_id(u.split("-", 1)[1]) for u in sets[n]} for n in sets}
    assert not vids["pretrain"] & (vids["dev"] | vids["test"])
    assert not vids["dev"] & vids["test"]
    assert len(vids["dev"]) == 1 and len(vids["test"]) == 1
    assert abs(hours["finetune"] * 3600 - 17.0) < 1e-6  # two whole videos (>= 10 s)
    # ids, speakers, text, audio
    text = _map(d / "pretrain" / "text")
    utt2spk = _map(d / "pretrain" / "utt2spk")
    wav = _map(d / "pretrain" / "wav.scp")
    u = next(k for k in sorted(text) if k.endswith("-00000-00000000-00000100"))
    assert u.startswith("en000-")
    assert utt2spk[u] == "en000-" + yodas.video_id(u.split("-", 1)[1])
    assert text[u] == "HELLO WORLD IT'S 5 O'CLOCK"
    assert not any("-00001-" in k for k in pool)  # "[Music]" captions dropped
    x, sr = sf.read(wav[u])
    assert sr == 8000 and len(x) == 8000
    assert all(not k.startswith("en100") for k in pool)
    keys = list(text)
    assert keys == sorted(keys, key=str.encode)


def test_deterministic_and_rerunnable(tmp_path):
    root = make_yodas(tmp_path / "yodas")
    args = dict(hours=30 / 3600, finetune_hours=5 / 3600, dev_hours=5 / 3600, test_hours=5 / 3600)
    yodas.prepare_yodas(root, tmp_path / "d1", ["en000"], **args)
    yodas.prepare_yodas(root, tmp_path / "d2", ["en000"], **args)
    for n in ("pretrain", "finetune", "dev", "test"):
        assert (tmp_path / "d1" / n / "text").read_text() == (tmp_path / "d2" / n / "text").read_text()


def test_missing_audio_skipped_or_strict(tmp_path):
    gone = "2qU-GST3DuI-00000-00000000-00000100"
    root = make_yodas(tmp_path / "yodas", missing_audio={gone})
    yodas.prepare_yodas(root, tmp_path / "d", ["en000"], hours=1, finetune_hours=0.001,
                        dev_hours=0, test_hours=0)
    assert f"en000-{gone}" not in _map(tmp_path / "d" / "pretrain" / "text")
    with pytest.raises(yodas.YodasError, match=gone):
        yodas.prepare_yodas(root, tmp_path / "d2", ["en000"], hours=1, dev_hours=0,
                            test_hours=0, strict=True)
    with pytest.raises(yodas.YodasError, match="en005"):
        yodas.prepare_yodas(root, tmp_path / "d3", ["en005"])


def test_shard_extraction_once_and_bad_archives(tmp_path):
    root = make_yodas(tmp_path / "yodas")
    files = yodas.extract_shard(root, "en000", "00000000")
    assert len(files) == 3 * len(CAPTIONS) and all(p.is_file() for p in files.values())
    next(iter(files.values())).unlink()  # the marker: not extracted again
    assert len(yodas.extract_shard(root, "en000", "00000000")) == 3 * len(CAPTIONS) - 1
    shard = root / "data" / "en001" / "audio" / "00000000.tar.gz"
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(yodas.YodasError, match="cannot extract .*00000000.tar.gz"):
        yodas.extract_shard(root, "en001", "00000000")
    with tarfile.open(shard, "w:gz") as tf:  # a member outside the target is refused
        info = tarfile.TarInfo("../escape.wav")
        info.size = 1
        tf.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(yodas.YodasError, match="cannot extract .*Path Traversal"):
        yodas.extract_shard(root, "en001", "00000000", extract_root=tmp_path / "x")
    assert not (tmp_path / "x" / "en001" / "escape.wav").exists()


def test_local_subsets(tmp_path):
    root = make_yodas(tmp_path / "yodas")
    assert yodas.local_subsets(root) == ["en000", "en001"]


def test_missing_huggingface_hub_is_clear(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(yodas.YodasError, match="pip install huggingface_hub"):
        yodas.download_yodas(tmp_path, ["en000"], 1, 0, 0)


def test_download_selects_only_needed_shards(monkeypatch, tmp_path):
    """A fake huggingface_hub copying from a local 'remote' copy."""
    import fnmatch
    import shutil

    remote = make_yodas(tmp_path / "remote")
    calls = []

    def snapshot_download(repo_id, repo_type, revision, local_dir, allow_patterns, max_workers):
        assert repo_id == "espnet/yodas" and repo_type == "dataset"
        calls.append(list(allow_patterns))
        for p in remote.rglob("*"):
            rel = p.relative_to(remote).as_posix()
            if p.is_file() and any(fnmatch.fnmatch(rel, pat) for pat in allow_patterns):
                dst = Path(local_dir) / rel
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(p, dst)
        return local_dir

    class Entry:
        def __init__(self, path):
            self.path = path

    class HfApi:
        def list_repo_tree(self, repo_id, path_in_repo, repo_type, revision):
            return [Entry(f"data/{n}") for n in ("en100", "en001", "en000", "fr000", "enx")]

    fake = types.SimpleNamespace(snapshot_download=snapshot_download, HfApi=HfApi)
    monkeypatch.setitem(sys.modules, "huggingface_hub", fake)
    assert yodas.discover_subsets("en") == ["en000", "en001"]
    local = tmp_path / "local"
    # 40 s: the first shard of en000 (3 videos x 8.5 s = 25.5 s) is not enough
    yodas.download_yodas(local, ["en000", "en001"], 30 / 3600, 5 / 3600, 5 / 3600)
    assert calls[0] == ["data/en000/duration/*", "data/en000/text/*",
                        "data/en001/duration/*", "data/en001/text/*"]
    assert calls[1] == ["data/en000/audio/00000000.tar.gz", "data/en000/audio/00000001.tar.gz"]
    assert not (local / "data" / "en001" / "audio").exists()
    hours = yodas.prepare_yodas(local, tmp_path / "data", ["en000", "en001"], 30 / 3600,
                                5 / 3600, 5 / 3600, 5 / 3600)
    assert set(hours) == {"pretrain", "finetune", "dev", "test"}


def test_data_sh_end_to_end(tmp_path):
    if not (REPO / "utils" / "parse_options.sh").is_file():
        pytest.skip("utils/parse_options.sh not available")
    root = make_yodas(tmp_path / "yodas")
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("espnet2_birq", "local", "utils"):
        (repo / name).symlink_to(REPO / name)
    rdir = repo / "egs2" / "yodas" / "ssl1"
    rdir.mkdir(parents=True)
    for name in ("db.sh", "local"):
        (rdir / name).symlink_to(REPO / "egs2" / "yodas" / "ssl1" / name)
    (rdir / "utils").symlink_to("../../../utils")
    env = dict(os.environ, YODAS=str(root), PYTHONPATH="")
    cmd = ["bash", "local/data.sh", "--python", sys.executable, "--download", "false",
           "--hours", "0.01", "--finetune_hours", "0.003", "--dev_hours", "0.002",
           "--test_hours", "0.002", "--extract_dir", str(tmp_path / "ex")]
    r = subprocess.run(cmd, cwd=rdir, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    for n in ("pretrain", "finetune", "dev", "test"):
        assert (rdir / "data" / n / "wav.scp").is_file()
    assert (tmp_path / "ex" / "en000" / "00000000").is_dir()
    r = subprocess.run(cmd, cwd=rdir, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def test_pretraining_lists_of_the_fixture_are_split_by_run_sh(tmp_path):
    """The YODAS recipe reads its pre-training lists in parts (run.sh: --num_splits_ssl 10,
    ESPnet's --multiple_iterator): the miniature corpus prepared by local/data.sh, then
    run.sh stage 5 with a stand-in trainer; ESPnet's split_scps runs for real."""
    if not (REPO / "utils" / "parse_options.sh").is_file():
        pytest.skip("utils/parse_options.sh not available")
    root = make_yodas(tmp_path / "yodas")
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "conf").symlink_to(REPO / "conf")
    rdir = repo / "egs2" / "yodas" / "ssl1"
    rdir.mkdir(parents=True)
    for name in ("run.sh", "db.sh", "local", "conf"):
        (rdir / name).symlink_to(REPO / "egs2" / "yodas" / "ssl1" / name)
    for name in ("ssl_asr.sh", "path.sh", "cmd.sh"):
        (rdir / name).symlink_to(REPO / "egs2" / "TEMPLATE" / "ssl1" / name)
    (rdir / "utils").symlink_to(REPO / "utils")
    env = dict(os.environ, YODAS=str(root), PYTHONPATH="", cmd_backend="local")
    r = subprocess.run(["bash", "local/data.sh", "--python", sys.executable, "--download", "false",
                        "--hours", "0.02", "--finetune_hours", "0.003", "--dev_hours", "0.002",
                        "--test_hours", "0.002", "--extract_dir", str(tmp_path / "ex")],
                       cwd=rdir, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    # what stages 2 and 4 leave for stage 5 (--feats_type raw): the checked lists, shapes
    for dset, split in (("pretrain", "train"), ("dev", "valid")):
        wav = (rdir / "data" / dset / "wav.scp").read_text()
        (rdir / "dump" / "raw" / dset).mkdir(parents=True)
        (rdir / "dump" / "raw" / dset / "wav.scp").write_text(wav)
        stats = rdir / "exp" / "ssl_stats_raw" / split
        stats.mkdir(parents=True)
        durations = [line.split() for line in (rdir / "data" / dset / "utt2dur").read_text().splitlines()] \
            if (rdir / "data" / dset / "utt2dur").is_file() else [[line.split()[0], "1.0"] for line in wav.splitlines()]
        (stats / "speech_shape").write_text("".join(f"{u} {int(float(d) * 16000)}\n" for u, d in durations))
        (stats / "feats_stats.npz").write_text("x\n")
    n_utts = len((rdir / "data" / "pretrain" / "wav.scp").read_text().splitlines())
    assert n_utts >= 10
    fake = fake_python_splitting(tmp_path)
    r = subprocess.run(["./run.sh", "--python", str(fake), "--ngpu", "0", "--stage", "5", "--stop_stage", "5"],
                       cwd=rdir, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    split = rdir / "exp" / "ssl_stats_raw" / "splits10"
    parts = [(split / "wav.scp" / f"split.{i}").read_text().splitlines() for i in range(10)]
    assert sorted(line for part in parts for line in part) == sorted(
        (rdir / "data" / "pretrain" / "wav.scp").read_text().splitlines())
    assert all(parts)
    launch = [c for c in (tmp_path / "python_calls.txt").read_text().splitlines() if "espnet2.bin.launch" in c]
    assert "--multiple_iterator true" in launch[0]
    assert "--train_shape_file exp/ssl_stats_raw/splits10/speech_shape" in launch[0]
