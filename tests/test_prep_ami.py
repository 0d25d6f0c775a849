"""Offline AMI preparation tests on a miniature copy of the corpus layout
(amicorpus/<meeting>/audio/*.wav + NXT manual annotations)."""

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
SPLITS = {"train": ["ES2002a"], "dev": ["ES2011a"], "eval": ["EN2002a"]}
AGENTS = {"A": ("MEE006", 1), "B": ("FEE005", 0), "C": ("MEE007", 2), "D": ("MEE008", 3)}
DUR = 12.0

HEAD = '<?xml version="1.0" encoding="ISO-8859-1" standalone="yes"?>\n'
NS = 'xmlns:nite="http://nite.sourceforge.net/"'


def words_xml(m, a):
    W = f"{m}.{a}.words"
    items = [
        f'<w nite:id="{W}0" starttime="1.00" endtime="1.40">Okay</w>',
        f'<w nite:id="{W}1" starttime="1.40" endtime="1.40" punc="true">,</w>',
        f'<w nite:id="{W}2" starttime="1.50" endtime="1.90">mm-hmm</w>',
        f'<vocalsound nite:id="{W}3" starttime="2.0" endtime="2.5" type="laugh"/>',
        f'<w nite:id="{W}4" starttime="2.5" endtime="2.8">don\'t</w>',
        f'<disfmarker nite:id="{W}5" starttime="2.8" endtime="2.8"/>',
        f'<w nite:id="{W}6" starttime="2.8" endtime="3.2">re-design</w>',
        f'<w nite:id="{W}7" starttime="3.2" endtime="3.3" trunc="true">th-</w>',
        f'<pause nite:id="{W}8" starttime="3.3" endtime="3.6"/>',
        f'<w nite:id="{W}9" starttime="3.6" endtime="3.8">uh</w>',
        f'<w nite:id="{W}10" starttime="3.8" endtime="4.0">huh</w>',
        f'<w nite:id="{W}11" starttime="4.0" endtime="4.0" punc="true">?</w>',
        # segment 2: only a vocal sound (must be skipped)
        f'<vocalsound nite:id="{W}12" starttime="5.0" endtime="5.5" type="cough"/>',
        # segment 3: single word with quotes/&amp; punctuation
        f'<w nite:id="{W}13" starttime="6.0" endtime="6.5">Remote&apos;s</w>',
        f'<w nite:id="{W}14" starttime="6.5" endtime="6.9">L_C_D_</w>',
        # segment 4: beyond the audio end -> clipped
        f'<w nite:id="{W}15" starttime="11.0" endtime="13.0">END</w>',
        f'<gap nite:id="{W}16" starttime="13.0" endtime="13.5"/>',
    ]
    return HEAD + f'<nite:root nite:id="{W}" {NS}>\n' + "\n".join(items) + "\n</nite:root>\n"


def segments_xml(m, a, offset):
    W = f"{m}.{a}.words"
    segs = [
        (0.9 + offset, 4.1 + offset, f"#id({W}0)..id({W}11)"),
        (4.9 + offset, 5.6 + offset, f"#id({W}12)"),
        (5.9 + offset, 7.0 + offset, f"#id({W}13)..id({W}14)"),
        (10.9, 13.1, f"#id({W}15)..id({W}16)"),
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
            (ann / "words" / f"{m}.{a}.words.xml").write_text(words_xml(m, a), encoding="latin-1")
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


def test_prepare_ihm(tmp_path):
    root = make_corpus(tmp_path / "ami")
    counts = ami.prepare_ami(root / "amicorpus", root / "annotations", tmp_path / "data",
                             "ihm", SPLITS)
    # 2 speakers x 3 non-empty segments per meeting
    assert counts == {"ihm_train": 6, "ihm_dev": 6, "ihm_eval": 6}
    d = tmp_path / "data" / "ihm_train"
    text = _map(d / "text")
    segs = _map(d / "segments")
    wav = _map(d / "wav.scp")
    u = "AMI_ES2002a_H01_MEE006_0000090_0000410"
    assert text[u] == "OKAY MM-HMM DON'T RE DESIGN TH UH-HUH"
    assert segs[u] == "AMI_ES2002a_H01 0.90 4.10"
    assert text["AMI_ES2002a_H01_MEE006_0000590_0000700"] == "REMOTE'S L C D"
    # clipped to the 12 s audio length
    assert segs["AMI_ES2002a_H01_MEE006_0001090_0001200"] == "AMI_ES2002a_H01 10.90 12.00"
    assert text["AMI_ES2002a_H01_MEE006_0001090_0001200"] == "END"
    # vocal-sound-only segment skipped
    assert not any("_0000490_" in k for k in text)
    assert wav["AMI_ES2002a_H00"].endswith("ES2002a/audio/ES2002a.Headset-0.wav")
    assert wav["AMI_ES2002a_H01"].endswith("ES2002a/audio/ES2002a.Headset-1.wav")
    assert set(wav) == {"AMI_ES2002a_H00", "AMI_ES2002a_H01"}  # C, D untranscribed
    spk2utt = _map(d / "spk2utt")
    assert sorted(spk2utt) == ["AMI_ES2002a_H00_FEE005", "AMI_ES2002a_H01_MEE006"]
    keys = list(_map(d / "utt2spk"))
    assert keys == sorted(keys, key=str.encode)
    assert validate_data_dir(d)["recs"] == 2
    assert "AMI_EN2002a_H00" in _map(tmp_path / "data" / "ihm_eval" / "wav.scp")


def test_prepare_sdm_overlaps(tmp_path):
    root = make_corpus(tmp_path / "ami")
    ami.prepare_ami(root / "amicorpus", root / "annotations", tmp_path / "data", "sdm", SPLITS)
    d = tmp_path / "data" / "sdm_dev"
    wav = _map(d / "wav.scp")
    assert list(wav) == ["AMI_ES2011a_SDM"]
    assert wav["AMI_ES2011a_SDM"].endswith("ES2011a.Array1-01.wav")
    segs = _map(d / "segments")
    # overlapping A (0.9-4.1) and B (1.1-4.3) segments both kept, same recording
    assert segs["AMI_ES2011a_SDM_MEE006_0000090_0000410"] == "AMI_ES2011a_SDM 0.90 4.10"
    assert segs["AMI_ES2011a_SDM_FEE005_0000110_0000430"] == "AMI_ES2011a_SDM 1.10 4.30"
    assert validate_data_dir(d)["utts"] == 6


def test_bad_annotation_and_missing_audio(tmp_path):
    root = make_corpus(tmp_path / "ami")
    bad = root / "annotations" / "words" / "ES2011a.B.words.xml"
    bad.write_text("<nite:root><w>broken")
    with pytest.raises(ami.AmiError, match="ES2011a.B.words.xml"):
        ami.prepare_ami(root / "amicorpus", root / "annotations", tmp_path / "d1", "ihm", SPLITS)
    counts = ami.prepare_ami(root / "amicorpus", root / "annotations", tmp_path / "d2",
                             "ihm", SPLITS, strict=False)
    assert counts["ihm_dev"] == 3  # speaker B of ES2011a skipped
    (root / "amicorpus" / "EN2002a" / "audio" / "EN2002a.Headset-1.wav").unlink()
    with pytest.raises(ami.AmiError, match="EN2002a.Headset-1.wav"):
        ami.prepare_ami(root / "amicorpus", root / "annotations", tmp_path / "d3", "ihm",
                        {"eval": ["EN2002a"]})
    with pytest.raises(ami.AmiError, match="IS1009a"):
        ami.prepare_ami(root / "amicorpus", root / "annotations", tmp_path / "d4", "ihm",
                        {"eval": ["IS1009a"]})


def test_builtin_partition_and_split_files():
    assert len(ami.SPLITS["train"]) == 136
    assert len(ami.SPLITS["dev"]) == 18 and len(ami.SPLITS["eval"]) == 16
    assert not set(ami.SPLITS["train"]) & set(ami.SPLITS["dev"] + ami.SPLITS["eval"])
    assert "IB4005" not in ami.ALL_MEETINGS or "IB4005" in ami.SPLITS["train"]
    for s in ("train", "dev", "eval"):
        f = REPO / "egs2" / "ami" / "ssl1" / "local" / f"split_{s}.orig"
        assert ami.read_split_file(f) == ami.SPLITS[s]


def test_download_plan(tmp_path, monkeypatch):
    root = make_corpus(tmp_path / "ami")
    calls = []
    monkeypatch.setattr(ami.dl, "download", lambda url, dest, **k: calls.append((url, dest)))
    monkeypatch.setattr(ami, "_check_wav", lambda p: None)
    chans = ami.headset_channels(root / "annotations")
    assert chans["ES2002a"] == [0, 1, 2, 3]
    ami.download_audio(tmp_path / "dl", ["ES2002a", "EN2001a"], "ihm", chans)
    urls = [u for u, _ in calls]
    assert urls[0] == ("https://groups.inf.ed.ac.uk/ami/AMICorpusMirror/amicorpus/"
                       "ES2002a/audio/ES2002a.Headset-0.wav")
    assert sum("EN2001a" in u for u in urls) == 5  # five headsets by default
    assert calls[0][1] == tmp_path / "dl" / "amicorpus" / "ES2002a" / "audio" / "ES2002a.Headset-0.wav"
    calls.clear()
    ami.download_audio(tmp_path / "dl", ["ES2002a"], "sdm")
    assert [u.rsplit("/", 1)[1] for u, _ in calls] == ["ES2002a.Array1-01.wav"]


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
    sd = tmp_path / "splits"
    sd.mkdir()
    for s, ms in SPLITS.items():
        (sd / f"split_{s}.orig").write_text("\n".join(ms) + "\n")
    env = {"AMI": str(root)}
    for mic in ("ihm", "sdm"):
        r = run_data_sh(rdir, env, "--download", "false", "--mic", mic, "--split_dir", str(sd))
        assert r.returncode == 0, r.stdout + r.stderr
        for s in SPLITS:
            assert (rdir / "data" / f"{mic}_{s}" / "segments").is_file()
    r = run_data_sh(rdir, env, "--download", "false", "--mic", "mdm")
    assert r.returncode != 0 and "ihm or sdm" in r.stdout + r.stderr


def test_download_failures_are_collected(tmp_path, monkeypatch):
    def fake(url, dest, **k):
        if url.endswith("Headset-2.wav"):
            raise ami.dl.DownloadError(f"failed to download {url}: HTTP Error 404")

    monkeypatch.setattr(ami.dl, "download", fake)
    monkeypatch.setattr(ami, "_check_wav", lambda p: None)
    with pytest.raises(ami.AmiError, match=r"1 AMI audio files failed.*Headset-2"):
        ami.download_audio(tmp_path, ["ES2002a"], "ihm")
