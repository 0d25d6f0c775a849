"""AMI meeting corpus download and Kaldi data preparation.

Sources (public, no registration):

* audio: ``https://groups.inf.ed.ac.uk/ami/AMICorpusMirror/amicorpus/<meeting>/audio/``
  ``<meeting>.Headset-<n>.wav`` (IHM, one wav per participant) or
  ``<meeting>.Array1-01.wav`` (SDM, first channel of array 1);
* annotations: ``https://groups.inf.ed.ac.uk/ami/AMICorpusAnnotations/ami_public_manual_1.6.2.zip``
  (NXT format; we read ``corpusResources/meetings.xml``,
  ``words/<meeting>.<agent>.words.xml`` and ``segments/<meeting>.<agent>.segments.xml``).

No checksums are published for AMI; downloads are verified against the
server's ``Content-Length`` and wav headers are checked with soundfile.

Utterances are the transcriber segments of ``segments.xml`` (each refers to
a range of ids in the agent's words file, ``#id(X.words3)..id(X.words9)``),
as in lhotse's AMI recipe (which, like us, uses annotations 1.6.2; Kaldi
s5b used the 1.6.1 export). Only ``<w>`` elements contribute text: elements
with ``punc="true"`` and non-word elements (``vocalsound``, ``disfmarker``,
``pause``, ``gap``, ``nonvocalsound``, ``comment``) are excluded. Text is
normalised by :func:`espnet2_birq.dataprep.text.normalize_ami`. Segments
left without words are skipped (counted).

Ids follow Kaldi s5b: recording ``AMI_<meeting>_H0<channel>`` (IHM) or
``AMI_<meeting>_SDM``; speaker ``<recording>_<global speaker id>``;
utterance ``<speaker>_<start cs:07d>_<end cs:07d>``.

Partition: the official AMI *full-corpus-ASR* partition (train 136 / dev 18
/ eval 16 meetings), the same lists as Kaldi's ``egs/ami/s5b/local/split_*.orig``
and lhotse's ``PARTITIONS['full-corpus-asr']``.
"""

from __future__ import annotations

import logging
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from . import download as dl
from espnet2_birq.utils.datadir import write_data_dir
from .text import normalize_ami

logger = logging.getLogger(__name__)

BASE_URL = "https://groups.inf.ed.ac.uk/ami"
ANNOTATIONS_ZIP = "ami_public_manual_1.6.2.zip"
NITE = "{http://nite.sourceforge.net/}"

# fmt: off
_SESSIONS = {
    "EN2001": "a b d e", "EN2002": "a b c d", "EN2003": "a", "EN2004": "a",
    "EN2005": "a", "EN2006": "a b", "EN2009": "b c d",
    **{f"ES20{n:02d}": "a b c d" for n in range(2, 17)},
    **{f"IS100{n}": "a b c d" for n in (0, 1, 3, 4, 6, 7, 8, 9)},
    "IS1002": "b c d", "IS1005": "a b c",
    **{f"TS30{n:02d}": "a b c d" for n in range(3, 13)},
}
_SINGLE = ["IB4001", "IB4002", "IB4003", "IB4004", "IB4005", "IB4010", "IB4011",
           "IN1001", "IN1002", "IN1005", "IN1007", "IN1008", "IN1009", "IN1012",
           "IN1013", "IN1014", "IN1016"]
_TRAIN_SESSIONS = (
    "ES2002 ES2005 ES2006 ES2007 ES2008 ES2009 ES2010 ES2012 ES2013 ES2015 ES2016 "
    "IS1000 IS1001 IS1002 IS1003 IS1004 IS1005 IS1006 IS1007 TS3005 TS3008 TS3009 "
    "TS3010 TS3011 TS3012 EN2001 EN2003 EN2004 EN2005 EN2006 EN2009 IN1001 IN1002 "
    "IN1005 IN1007 IN1008 IN1009 IN1012 IN1013 IN1014 IN1016 ES2014 TS3007 ES2003 "
    "TS3006").split()
_DEV_SESSIONS = "ES2011 IS1008 TS3004 IB4001 IB4002 IB4003 IB4004 IB4010 IB4011".split()
_EVAL_SESSIONS = "ES2004 IS1009 TS3003 EN2002".split()
# fmt: on


def _expand(sessions: Sequence[str]) -> List[str]:
    out = []
    for s in sessions:
        if s in _SESSIONS:
            out += [s + x for x in _SESSIONS[s].split()]
        else:
            out.append(s)
    return sorted(out)


SPLITS = {
    "train": _expand(_TRAIN_SESSIONS),
    "dev": _expand(_DEV_SESSIONS),
    "eval": _expand(_EVAL_SESSIONS),
}
ALL_MEETINGS = sorted(set(SPLITS["train"]) | set(SPLITS["dev"]) | set(SPLITS["eval"]))
FIVE_HEADSETS = {"EN2001a", "EN2001d", "EN2001e"}


class AmiError(RuntimeError):
    pass


def read_split_file(path) -> List[str]:
    with open(path, encoding="utf-8") as f:
        return [ln.strip() for ln in f if ln.strip() and not ln.startswith("#")]


# ----------------------------------------------------------------- download
def find_annotations_dir(root) -> Optional[Path]:
    """The directory containing ``words/``, ``segments/`` and
    ``corpusResources/meetings.xml`` below ``root`` (depth <= 2)."""
    root = Path(root)
    for cand in [root, *root.glob("*"), *root.glob("*/*")]:
        if (cand / "corpusResources" / "meetings.xml").is_file() and (cand / "words").is_dir():
            return cand
    return None


def download_annotations(root, base_url: str = BASE_URL) -> Path:
    root = Path(root)
    z = dl.download(f"{base_url}/AMICorpusAnnotations/{ANNOTATIONS_ZIP}", root / ANNOTATIONS_ZIP)
    dl.extract(z, root / "annotations")
    ann = find_annotations_dir(root / "annotations")
    if ann is None:
        raise AmiError(f"{z} does not contain corpusResources/meetings.xml and words/")
    return ann


def wav_name(meeting: str, mic: str, channel: int = 0) -> str:
    if mic == "ihm":
        return f"{meeting}.Headset-{channel}.wav"
    if mic == "sdm":
        return f"{meeting}.Array1-01.wav"
    raise ValueError(f"unsupported mic {mic!r} (ihm or sdm)")


def download_audio(root, meetings: Iterable[str], mic: str = "ihm",
                   channels: Optional[Dict[str, List[int]]] = None,
                   base_url: str = BASE_URL) -> Path:
    """Download the audio to ``<root>/amicorpus/<meeting>/audio/``."""
    root = Path(root)
    failed = []
    for m in meetings:
        if mic == "ihm":
            chans = (channels or {}).get(m) or list(range(5 if m in FIVE_HEADSETS else 4))
        else:
            chans = [0]
        for ch in chans:
            name = wav_name(m, mic, ch)
            dest = root / "amicorpus" / m / "audio" / name
            try:
                dl.download(f"{base_url}/AMICorpusMirror/amicorpus/{m}/audio/{name}", dest)
                _check_wav(dest)
            except (dl.DownloadError, AmiError) as e:
                logger.error("%s", e)
                failed.append(name)
    if failed:
        raise AmiError(f"{len(failed)} AMI audio files failed to download, e.g. "
                       f"{failed[:5]}; re-run to resume (finished files are skipped)")
    return root / "amicorpus"


def _check_wav(path: Path):
    import soundfile as sf

    try:
        sf.info(str(path))
    except Exception as e:  # noqa: BLE001 - soundfile raises several types
        raise AmiError(f"{path} is not a readable audio file ({e}); delete it "
                       f"and its .done marker and re-run") from e


# ------------------------------------------------------------ annotations
def _parse_xml(path: Path):
    try:
        return ET.parse(path).getroot()
    except (ET.ParseError, OSError) as e:
        raise AmiError(f"cannot read annotation file {path}: {e}") from e


def read_meetings_xml(ann_dir) -> Dict[str, Dict[str, Tuple[str, int]]]:
    """``{meeting: {agent: (global_speaker_id, channel)}}``."""
    root = _parse_xml(Path(ann_dir) / "corpusResources" / "meetings.xml")
    out: Dict[str, Dict[str, Tuple[str, int]]] = {}
    for meeting in root.iter("meeting"):
        mid = meeting.attrib.get("observation")
        if not mid:
            continue
        for spk in meeting.iter("speaker"):
            try:
                out.setdefault(mid, {})[spk.attrib["nxt_agent"]] = (
                    spk.attrib["global_name"], int(spk.attrib["channel"]))
            except (KeyError, ValueError) as e:
                raise AmiError(f"meetings.xml: bad speaker entry in {mid}: {spk.attrib}") from e
    return out


_HREF = re.compile(r"^(?P<file>[^#]+)#id\((?P<a>[^)]+)\)(?:\.\.id\((?P<b>[^)]+)\))?$")


class _WordsFile:
    def __init__(self, path: Path):
        self.path = path
        root = _parse_xml(path)
        self.ids: List[str] = []
        self.elems = []
        self.pos: Dict[str, int] = {}
        for el in root:
            wid = el.attrib.get(NITE + "id")
            if wid is None:
                continue
            self.pos[wid] = len(self.elems)
            self.ids.append(wid)
            self.elems.append(el)

    def words(self, a: str, b: Optional[str]) -> List[str]:
        if a not in self.pos or (b is not None and b not in self.pos):
            raise AmiError(f"{self.path}: word id {a if a not in self.pos else b} not found")
        i, j = self.pos[a], self.pos[b if b is not None else a]
        out = []
        for el in self.elems[i:j + 1]:
            if el.tag != "w" or el.attrib.get("punc") == "true":
                continue
            if el.text and el.text.strip():
                out.append(el.text.strip())
        return out


def parse_segments(ann_dir, meeting: str, agent: str, strict: bool = True):
    """Return ``[(start, end, normalised_text)]`` for one meeting/agent and
    the number of segments skipped as empty."""
    ann_dir = Path(ann_dir)
    seg_file = ann_dir / "segments" / f"{meeting}.{agent}.segments.xml"
    words_cache: Dict[str, _WordsFile] = {}
    out = []
    empty = 0
    root = _parse_xml(seg_file)
    for seg in root.iter("segment"):
        try:
            start = float(seg.attrib["transcriber_start"])
            end = float(seg.attrib["transcriber_end"])
        except (KeyError, ValueError) as e:
            msg = f"{seg_file}: segment {seg.attrib.get(NITE + 'id')} has bad times"
            if strict:
                raise AmiError(msg) from e
            logger.warning("skipping: %s", msg)
            empty += 1
            continue
        words: List[str] = []
        for child in seg:
            href = child.attrib.get("href")
            if child.tag != NITE + "child" or not href:
                continue
            m = _HREF.match(href)
            if not m:
                raise AmiError(f"{seg_file}: cannot parse href {href!r}")
            fname = m.group("file")
            if fname not in words_cache:
                words_cache[fname] = _WordsFile(ann_dir / "words" / fname)
            words += words_cache[fname].words(m.group("a"), m.group("b"))
        text = normalize_ami(" ".join(words))
        if not text or end <= start:
            empty += 1
            continue
        out.append((start, end, text))
    return out, empty


# ------------------------------------------------------------- preparation
def prepare_ami(corpus_dir, ann_dir, data_root, mic: str = "ihm",
                splits: Optional[Dict[str, List[str]]] = None,
                strict: bool = True, min_dur: float = 0.1) -> Dict[str, int]:
    """Write ``<data_root>/<mic>_{train,dev,eval}``. ``corpus_dir`` holds
    ``<meeting>/audio/*.wav`` (the ``amicorpus`` directory)."""
    import soundfile as sf

    corpus_dir, ann_dir = Path(corpus_dir), Path(ann_dir)
    if mic not in ("ihm", "sdm"):
        raise ValueError(f"unsupported mic {mic!r} (ihm or sdm)")
    splits = splits or SPLITS
    speakers = read_meetings_xml(ann_dir)
    counts = {}
    for split, meetings in splits.items():
        wav, utt2spk, text, segments = {}, {}, {}, {}
        n_empty = n_dup = n_clip = 0
        missing = []
        for m in meetings:
            if m not in speakers:
                msg = f"meeting {m} not in {ann_dir}/corpusResources/meetings.xml"
                if strict:
                    raise AmiError(msg)
                logger.warning("skipping: %s", msg)
                continue
            for agent, (gspk, ch) in sorted(speakers[m].items()):
                seg_file = ann_dir / "segments" / f"{m}.{agent}.segments.xml"
                if not seg_file.is_file():
                    logger.warning("no segments file %s; speaker %s of %s has no "
                                   "transcription", seg_file, gspk, m)
                    continue
                if mic == "ihm":
                    rec = f"AMI_{m}_H{ch:02d}"
                    path = corpus_dir / m / "audio" / wav_name(m, "ihm", ch)
                else:
                    rec = f"AMI_{m}_SDM"
                    path = corpus_dir / m / "audio" / wav_name(m, "sdm")
                if not path.is_file():
                    missing.append(str(path))
                    continue
                try:
                    segs, empty = parse_segments(ann_dir, m, agent, strict=strict)
                except AmiError:
                    if strict:
                        raise
                    logger.exception("skipping annotation of %s.%s", m, agent)
                    continue
                n_empty += empty
                dur = sf.info(str(path)).duration
                spk = f"{rec}_{gspk}"
                for start, end, txt in segs:
                    if end > dur:
                        end = dur
                        n_clip += 1
                    if end - start < min_dur:
                        n_empty += 1
                        continue
                    utt = f"{spk}_{int(round(start * 100)):07d}_{int(round(end * 100)):07d}"
                    if utt in utt2spk:
                        n_dup += 1
                        continue
                    wav[rec] = str(path.resolve())
                    utt2spk[utt] = spk
                    text[utt] = txt
                    segments[utt] = (rec, start, end)
        if missing:
            msg = (f"{split}: {len(missing)} audio files missing, e.g. {missing[:3]} "
                   f"(run with --download true, or fix AMI= in db.sh)")
            if strict:
                raise AmiError(msg)
            logger.warning(msg)
        if not utt2spk:
            raise AmiError(f"{split}: no utterances prepared from {corpus_dir}")
        if n_empty or n_dup or n_clip:
            logger.warning("%s_%s: skipped %d empty/too short segments, %d duplicate "
                           "ids; clipped %d segments to the audio length",
                           mic, split, n_empty, n_dup, n_clip)
        write_data_dir(Path(data_root) / f"{mic}_{split}", wav, utt2spk,
                       text=text, segments=segments)
        counts[f"{mic}_{split}"] = len(utt2spk)
        logger.info("wrote %s/%s_%s: %d utterances", data_root, mic, split, len(utt2spk))
    return counts


def headset_channels(ann_dir) -> Dict[str, List[int]]:
    return {m: sorted(ch for _, ch in agents.values())
            for m, agents in read_meetings_xml(ann_dir).items()}


def _splits_from_dir(split_dir) -> Dict[str, List[str]]:
    if not split_dir:
        return SPLITS
    out = {}
    for s in ("train", "dev", "eval"):
        f = Path(split_dir) / f"split_{s}.orig"
        if not f.is_file():
            raise AmiError(f"split list {f} not found")
        out[s] = read_split_file(f)
    return out


def main(argv=None) -> int:
    import argparse
    import sys

    p = argparse.ArgumentParser(description="AMI download / Kaldi data preparation")
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("download", "prepare"):
        q = sub.add_parser(name)
        q.add_argument("--root", required=True,
                       help="AMI root: holds amicorpus/ and annotations/")
        q.add_argument("--mic", choices=["ihm", "sdm"], default="ihm")
        q.add_argument("--split_dir", default=None,
                       help="directory with split_{train,dev,eval}.orig "
                            "(default: built-in full-corpus-ASR lists)")
        if name == "download":
            q.add_argument("--base_url", default=BASE_URL)
        else:
            q.add_argument("--data_dir", required=True)
            q.add_argument("--skip_bad", action="store_true",
                           help="skip (and count) bad/missing inputs instead of failing")
    w = sub.add_parser("write_splits", help="write the built-in split lists")
    w.add_argument("--out_dir", required=True)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        if a.cmd == "write_splits":
            for s, ms in SPLITS.items():
                Path(a.out_dir, f"split_{s}.orig").write_text("\n".join(ms) + "\n")
            return 0
        splits = _splits_from_dir(a.split_dir)
        meetings = sorted({m for ms in splits.values() for m in ms})
        root = Path(a.root)
        if a.cmd == "download":
            ann = download_annotations(root, a.base_url)
            chans = headset_channels(ann)
            download_audio(root, meetings, a.mic, chans, a.base_url)
        else:
            ann = find_annotations_dir(root / "annotations") or find_annotations_dir(root)
            if ann is None:
                raise AmiError(f"AMI annotations (corpusResources/meetings.xml, words/, "
                               f"segments/) not found under {root}")
            counts = prepare_ami(root / "amicorpus", ann, a.data_dir, a.mic, splits,
                                 strict=not a.skip_bad)
            for k, v in counts.items():
                print(f"{k}\t{v}")
    except (AmiError, dl.DownloadError, FileNotFoundError, ValueError) as e:
        print(f"ERROR: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
