"""Offline AMI preparation tests (lhotse's recipe + our ids, text and checks) on a miniature
copy of the corpus layout (amicorpus/<meeting>/audio/*.wav + NXT manual annotations), one
meeting of each of the train / dev / eval lists."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from espnet2_birq.dataprep import ami
from espnet2_birq.utils.datadir import validate_data_dir
from espnet2_birq.dataprep.text import normalize_ami

REPO = Path(__file__).resolve().parent.parent
AGENTS = {"A": ("MEE006", 1), "B": ("FEE005", 0), "C": ("MEE007", 2), "D": ("MEE008", 3)}
DUR = 12.0

HEAD = '<?xml version="1.0" encoding="ISO-8859-1" standalone="yes"?>\n'
NS = 'xmlns:nite="http://nite.sourceforge.net/"'


def words_xml(m, a, offset):
    W = f"{m}.{a}.words"
    items = [  # (tag, start, end, attributes, text)
        ("w", 1.0, 1.4, "", "Okay"), ("w", 1.4, 1.4, 'punc="true"', ","),
        ("w", 1.5, 1.9, "", "mm-hmm"), ("vocalsound", 2.0, 2.5, 'type="laugh"', None),
        ("w", 2.5, 2.8, "", "don't"), ("disfmarker", 2.8, 2.8, "", None),
        ("w", 2.8, 3.2, "", "re-design"), ("w", 3.2, 3.3, 'trunc="true"', "th-"),
        ("pause", 3.3, 3.6, "", None), ("w", 3.6, 3.8, "", "uh"), ("w", 3.8, 4.0, "", "huh"),
        ("w", 4.0, 4.0, 'punc="true"', "?"),
        # segment 2: only a vocal sound (no utterance)
        ("vocalsound", 5.0, 5.5, 'type="cough"', None),
        # segment 3: two sentences (split at the full stop), XML-escaped punctuation
        ("w", 6.0, 6.5, "", "Remote&apos;s"), ("w", 6.5, 6.5, 'punc="true"', "."),
        ("w", 6.5, 6.9, "", "L_C_D_"),
        # segment 4: ends after the 12 s of audio (the IHM utterance is dropped)
        ("w", 11.0, 13.0, "", "END"), ("gap", 13.0, 13.5, "", None),
    ]
    lines = []
    for i, (tag, s, e, attrs, text) in enumerate(items):
        off = offset if i < len(items) - 2 else 0.0
        head = f'<{tag} nite:id="{W}{i}" starttime="{s + off:.2f}" endtime="{e + off:.2f}" {attrs}'
        lines.append(f"{head}>{text}</{tag}>" if text is not None else f"{head}/>")
    return HEAD + f'<nite:root nite:id="{W}" {NS}>\n' + "\n".join(lines) + "\n</nite:root>\n"


def segments_xml(m, a, offset):
    W = f"{m}.{a}.words"
    segs = [
        (0.9 + offset, 4.1 + offset, f"#id({W}0)..id({W}11)"),
        (4.9 + offset, 5.6 + offset, f"#id({W}12)"),
        (5.9 + offset, 7.0 + offset, f"#id({W}13)..id({W}15)"),
        (10.9, 13.1, f"#id({W}16)..id({W}17)"),
    ]
    body = "\n".join(
        f'<segment nite:id="{m}.{a}.seg.{i}" transcriber_start="{s:.3f}" '
        f'transcriber_end="{e:.3f}" participant="x">'
        f'<nite:child href="{m}.{a}.words.xml{h}"/></segment>'
        for i, (s, e, h) in enumerate(segs))
    return HEAD + f'<nite:root nite:id="{m}.{a}.segs" {NS}>\n{body}\n</nite:root>\n'


def make_corpus(root: Path, meetings=("ES2002a", "ES2011a", "EN2002a")):
    ann = root / "annotations"
    (ann / "corpusResources").mkdir(parents=True)
    (ann / "words").mkdir()
    (ann / "segments").mkdir()
    mx = ['<?xml version="1.0" encoding="UTF-8"?>\n<meetings>']
    rng = np.random.default_rng(0)
    for m in meetings:
        mx.append(f'<meeting observation="{m}" type="scenario" duration="12">')
        for a, (g, ch) in AGENTS.items():
            mx.append(f'<speaker nxt_agent="{a}" global_name="{g}" channel="{ch}" role="PM"/>')
        mx.append("</meeting>")
        # A and B transcribed; B's segments are shifted by 0.2 s -> overlap with A
        for a, off in (("A", 0.0), ("B", 0.2)):
            (ann / "words" / f"{m}.{a}.words.xml").write_text(words_xml(m, a, off), encoding="latin-1")
            (ann / "segments" / f"{m}.{a}.segments.xml").write_text(segments_xml(m, a, off))
        audio = root / "amicorpus" / m / "audio"
        audio.mkdir(parents=True)
        n = int(DUR * 16000)
        for ch in range(4):
            sf.write(str(audio / f"{m}.Headset-{ch}.wav"),
                     (0.05 * rng.standard_normal(n)).astype(np.float32), 16000, subtype="PCM_16")
        sf.write(str(audio / f"{m}.Array1-01.wav"),
                 (0.05 * rng.standard_normal(n)).astype(np.float32), 16000, subtype="PCM_16")
    mx.append("</meetings>\n")
    (ann / "corpusResources" / "meetings.xml").write_text("\n".join(mx))
    return root


def _map(p: Path):
    return dict(line.split(" ", 1) for line in p.read_text().splitlines())


def test_normalize_ami():
    assert normalize_ami("Okay mm-hmm don't re-design th- uh huh") == \
        "OKAY MM-HMM DON'T RE DESIGN TH UH-HUH"
    assert normalize_ami("O K , the T_V_ ' 's") == "OK THE T V 'S"
    assert normalize_ami(". ?") == ""


def test_prepare_ihm(tmp_path, caplog):
    root = make_corpus(tmp_path / "ami")
    counts = ami.prepare_ami(root, tmp_path / "data", "ihm")
    # 2 speakers x 3 utterances per meeting: segment 1, the two sentences of segment 3
    assert counts == {"ihm_train": 6, "ihm_dev": 6, "ihm_eval": 6}
    d = tmp_path / "data" / "ihm_train"
    text = _map(d / "text")
    segs = _map(d / "segments")
    wav = _map(d / "wav.scp")
    # times: first word's start to last word's end (the transcriber segment is 0.90-4.10)
    u = "AMI_ES2002a_H01_MEE006_0000100_0000400"
    assert text[u] == "OKAY MM-HMM DON'T RE DESIGN TH UH-HUH"
    assert segs[u] == "AMI_ES2002a_H01 1.00 4.00"
    assert text["AMI_ES2002a_H01_MEE006_0000600_0000650"] == "REMOTE'S"
    assert text["AMI_ES2002a_H01_MEE006_0000650_0000690"] == "L C D"
    assert text["AMI_ES2002a_H00_FEE005_0000120_0000420"] == text[u]
    # the segment ending after the 12 s of audio and the vocal-sound-only one give nothing
    assert not any("_00011" in k or "_00005" in k for k in text)
    assert wav["AMI_ES2002a_H00"].endswith("ES2002a/audio/ES2002a.Headset-0.wav")
    assert wav["AMI_ES2002a_H01"].endswith("ES2002a/audio/ES2002a.Headset-1.wav")
    assert set(wav) == {"AMI_ES2002a_H00", "AMI_ES2002a_H01"}  # C, D untranscribed
    spk2utt = _map(d / "spk2utt")
    assert sorted(spk2utt) == ["AMI_ES2002a_H00_FEE005", "AMI_ES2002a_H01_MEE006"]
    keys = list(_map(d / "utt2spk"))
    assert keys == sorted(keys, key=str.encode)
    assert validate_data_dir(d)["recs"] == 2
    assert "AMI_EN2002a_H00" in _map(tmp_path / "data" / "ihm_eval" / "wav.scp")
    assert "AMI_ES2011a_H00" in _map(tmp_path / "data" / "ihm_dev" / "wav.scp")


def test_prepare_sdm_overlaps(tmp_path):
    root = make_corpus(tmp_path / "ami")
    ami.prepare_ami(root, tmp_path / "data", "sdm")
    d = tmp_path / "data" / "sdm_dev"
    wav = _map(d / "wav.scp")
    assert list(wav) == ["AMI_ES2011a_SDM"]
    assert wav["AMI_ES2011a_SDM"].endswith("ES2011a.Array1-01.wav")
    segs = _map(d / "segments")
    # overlapping A (1.0-4.0) and B (1.2-4.2) utterances both kept, same recording
    assert segs["AMI_ES2011a_SDM_MEE006_0000100_0000400"] == "AMI_ES2011a_SDM 1.00 4.00"
    assert segs["AMI_ES2011a_SDM_FEE005_0000120_0000420"] == "AMI_ES2011a_SDM 1.20 4.20"
    # lhotse trims the utterance ending after the audio (SDM) to its end
    assert segs["AMI_ES2011a_SDM_MEE006_0001100_0001200"] == "AMI_ES2011a_SDM 11.00 12.00"
    assert validate_data_dir(d)["utts"] == 8


def test_bad_annotation_and_missing_audio(tmp_path, caplog):
    root = make_corpus(tmp_path / "ami")
    bad = root / "annotations" / "words" / "ES2011a.B.words.xml"
    bad.write_text("<nite:root><w>broken")
    for strict in (True, False):
        with pytest.raises(ami.AmiError, match="ES2011a.B.words.xml"):
            ami.prepare_ami(root, tmp_path / "d1", "ihm", strict=strict)
    bad.write_text(words_xml("ES2011a", "B", 0.2), encoding="latin-1")
    # a missing headset, even an untranscribed one: error, or the meeting is skipped
    (root / "amicorpus" / "EN2002a" / "audio" / "EN2002a.Headset-2.wav").unlink()
    with pytest.raises(ami.AmiError, match="EN2002a.Headset-2.wav"):
        ami.prepare_ami(root, tmp_path / "d3", "ihm")
    with pytest.raises(ami.AmiError, match="ihm_eval: no utterances"):
        ami.prepare_ami(root, tmp_path / "d4", "ihm", strict=False)
    assert "skipping 1 meeting(s) EN2002a" in caplog.text
    assert ami.prepare_ami(root, tmp_path / "d5", "sdm")["sdm_eval"] == 8
    (root / "amicorpus" / "ES2002a" / "audio" / "ES2002a.Array1-01.wav").unlink()
    with pytest.raises(ami.AmiError, match="ES2002a.Array1-01.wav"):
        ami.prepare_ami(root, tmp_path / "d6", "sdm")
    with pytest.raises(ami.AmiError, match="split of the full-corpus-ASR partition has no audio"):
        ami.prepare_ami(root, tmp_path / "d7", "sdm", strict=False)


def test_full_corpus_asr_partition():
    splits = ami.PARTITION
    assert [len(splits[s]) for s in ("train", "dev", "eval")] == [136, 18, 16]
    assert not set(splits["train"]) & set(splits["dev"] + splits["eval"])
    assert {"ES2011a", "IB4001"} <= set(splits["dev"]) and {"EN2002a", "ES2004a"} <= set(splits["eval"])


def test_download_extracts_the_annotations_once(tmp_path, monkeypatch):
    """download: lhotse fetches audio and the annotation zip; the zip is extracted once."""
    import zipfile

    src = make_corpus(tmp_path / "src") / "annotations"
    calls = []

    def fake_download(target_dir, mic):
        calls.append(mic)
        with zipfile.ZipFile(Path(target_dir) / ami.ANNOTATIONS_ZIP, "w") as z:
            for f in src.rglob("*.xml"):
                z.write(f, f.relative_to(src))

    monkeypatch.setattr(ami, "download_ami", fake_download)
    root = tmp_path / "root"
    root.mkdir()
    assert ami.main(["download", "--root", str(root), "--mic", "sdm"]) == 0
    assert calls == ["sdm"] and (root / "annotations" / "words" / "ES2002a.A.words.xml").is_file()
    (root / ami.ANNOTATIONS_ZIP).unlink()
    assert ami.annotations_dir(root) == root / "annotations"
    assert ami.main(["prepare", "--root", str(tmp_path / "nowhere"), "--data_dir", str(tmp_path / "d")]) == 1


def make_recipe_sandbox(tmp_path: Path, corpus: str) -> Path:
    """tmp repo: symlinks to the real package/local/utils + the recipe files."""
    if not (REPO / "utils" / "parse_options.sh").is_file():
        pytest.skip("utils/parse_options.sh not available")
    root = tmp_path / "repo"
    root.mkdir()
    for name in ("espnet2_birq", "local", "utils"):
        (root / name).symlink_to(REPO / name)
    rdir = root / "egs2" / corpus / "ssl1"
    rdir.mkdir(parents=True)
    for name in ("db.sh", "local"):
        (rdir / name).symlink_to(REPO / "egs2" / corpus / "ssl1" / name)
    (rdir / "utils").symlink_to("../../../utils")
    return rdir


def run_data_sh(rdir: Path, env_extra: dict, *args):
    env = dict(os.environ, **env_extra)
    env["PYTHONPATH"] = ""
    return subprocess.run(["bash", "local/data.sh", "--python", sys.executable, *args],
                          cwd=rdir, env=env, capture_output=True, text=True, timeout=120)


def test_data_sh_end_to_end(tmp_path):
    root = make_corpus(tmp_path / "ami")
    rdir = make_recipe_sandbox(tmp_path, "ami")
    env = {"AMI": str(root)}
    for mic in ("ihm", "sdm"):
        r = run_data_sh(rdir, env, "--download", "false", "--mic", mic)
        assert r.returncode == 0, r.stdout + r.stderr
        for s in ("train", "dev", "eval"):
            assert (rdir / "data" / f"{mic}_{s}" / "segments").is_file()
    r = run_data_sh(rdir, env, "--download", "false", "--mic", "mdm")
    assert r.returncode != 0 and "ihm or sdm" in r.stdout + r.stderr
    (root / "amicorpus" / "ES2002a" / "audio" / "ES2002a.Headset-0.wav").unlink()
    r = run_data_sh(rdir, env, "--download", "false", "--stage", "2")
    assert r.returncode != 0 and "ES2002a.Headset-0.wav" in r.stdout + r.stderr
