"""AMI (IHM / SDM) through lhotse's recipe, written as the recipe's Kaldi dirs. lhotse downloads the audio
(``<root>/wav_db/<meeting>/audio/``; ``<root>/amicorpus/`` works too) and the NXT annotations (zip,
extracted here into ``<root>/annotations``), and cuts utterances: the ``<w>`` words of a transcriber
segment, split at full stops, first word's start to last word's end (IHM: dropped if ending after the
audio); partition full-corpus-ASR. Here: Kaldi s5b ids (``AMI_<meeting>_H0<channel>``/``_SDM`` recordings,
speaker ``<recording>_<global id>``, utterance ``<speaker>_<start cs:07d>_<end cs:07d>``), our text
normalisation, errors naming unreadable annotations and missing audio (``strict=False``: meeting skipped).
"""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path
from typing import Dict

from lhotse.recipes.ami import PARTITIONS, download_ami
from lhotse.recipes.ami import prepare_ami as lhotse_prepare

from espnet2_birq.utils.datadir import write_data_dir
from .text import normalize_ami

logger = logging.getLogger(__name__)

ANNOTATIONS_ZIP = "ami_public_manual_1.6.2.zip"
SPLITS = {"train": "train", "dev": "dev", "eval": "test"}  # ours: lhotse's
PARTITION = {ours: PARTITIONS["full-corpus-asr"][theirs] for ours, theirs in SPLITS.items()}


class AmiError(RuntimeError):
    pass


def annotations_dir(root: Path) -> Path:
    ann, zip_path = root / "annotations", root / ANNOTATIONS_ZIP
    if not (ann / "corpusResources" / "meetings.xml").is_file():
        if not zip_path.is_file():
            raise AmiError(f"AMI annotations not found: {ann} nor {zip_path} (run with --download true)")
        with zipfile.ZipFile(zip_path) as z:
            z.extractall(ann)
    return ann


def check_annotations(ann: Path) -> None:
    """Name the annotation files that do not parse (lhotse stops at the first without naming it)."""
    bad = []
    for f in sorted([ann / "corpusResources" / "meetings.xml", *ann.glob("segments/*"), *ann.glob("words/*")]):
        try:
            ET.parse(f)
        except (ET.ParseError, OSError) as e:
            bad.append(f"{f} ({e})")
    if bad:
        raise AmiError(f"cannot read AMI annotation file(s) (extract {ANNOTATIONS_ZIP} again): {'; '.join(bad)}")


def missing_audio(ann: Path, audio: Path, mic: str) -> Dict[str, list]:
    # Every headset of meetings.xml must be there: lhotse numbers a meeting's headset files in order,
    # so a missing one would shift the later ones onto other speakers.
    missing: Dict[str, list] = {}
    for meeting in ET.parse(ann / "corpusResources" / "meetings.xml").getroot().iter("meeting"):
        m = meeting.attrib.get("observation")
        if any(m in ms for ms in PARTITION.values()):
            names = ({f"{m}.Headset-{spk.attrib['channel']}.wav" for spk in meeting.iter("speaker")}
                     if mic == "ihm" else {f"{m}.Array1-01.wav"})
            for wav in sorted(audio / m / "audio" / name for name in names):
                if not wav.is_file():
                    missing.setdefault(m, []).append(str(wav))
    return missing


def prepare_ami(root, data_root, mic: str = "ihm", strict: bool = True, min_dur: float = 0.1) -> Dict[str, int]:
    """Write ``<data_root>/<mic>_{train,dev,eval}`` (``mic``: ihm or sdm) from the AMI copy in ``root``;
    returns utterance counts."""
    root = Path(root)
    ann = annotations_dir(root)
    audio = next((d for d in (root / "wav_db", root / "amicorpus") if d.is_dir()), None)
    if audio is None:
        raise AmiError(f"AMI audio not found in {root}/wav_db or {root}/amicorpus (run with --download true)")
    check_annotations(ann)
    missing = missing_audio(ann, audio, mic)
    if missing:
        msg = f"{sum(map(len, missing.values()))} AMI audio files missing, e.g. {sum(missing.values(), [])[:3]}"
        if strict:
            raise AmiError(f"{msg} (run with --download true, fix AMI= in db.sh, or --skip_bad true)")
        logger.warning("%s: skipping %d meeting(s) %s", msg, len(missing), " ".join(sorted(missing)))
    try:
        manifests = lhotse_prepare(audio, ann, mic=mic, partition="full-corpus-asr", normalize_text="kaldi")
    except AssertionError as e:  # lhotse's check of a split without any recording
        raise AmiError(f"a split of the full-corpus-ASR partition has no audio in {audio}: {e}") from e
    counts = {}
    for split, part in SPLITS.items():
        recs = {r.id: r for r in manifests[part]["recordings"]}
        wav, utt2spk, text, segs = {}, {}, {}, {}
        skipped = 0
        for s in manifests[part]["supervisions"]:
            if s.recording_id in missing:
                continue
            txt = normalize_ami(s.text)
            if not txt or s.duration < min_dur:
                skipped += 1
                continue
            rec = f"AMI_{s.recording_id}_" + (f"H{s.channel:02d}" if mic == "ihm" else "SDM")
            path = next(x.source for x in recs[s.recording_id].sources if mic == "sdm" or x.channels == [s.channel])
            spk = f"{rec}_{s.speaker}"
            utt = f"{spk}_{round(s.start * 100):07d}_{round(s.end * 100):07d}"
            if utt in utt2spk:
                skipped += 1
                continue
            wav[rec], utt2spk[utt], text[utt], segs[utt] = str(Path(path).resolve()), spk, txt, (rec, s.start, s.end)
        if not utt2spk:
            raise AmiError(f"{mic}_{split}: no utterances prepared from {audio}")
        if skipped:
            logger.warning("%s_%s: skipped %d empty, shorter than %.2f s or duplicate-id utterances", mic, split,
                           skipped, min_dur)
        write_data_dir(Path(data_root) / f"{mic}_{split}", wav, utt2spk, text=text, segments=segs)
        counts[f"{mic}_{split}"] = len(utt2spk)
    return counts


def main(argv=None) -> int:
    import argparse

    p = argparse.ArgumentParser(description="AMI download / Kaldi data preparation (lhotse)")
    p.add_argument("cmd", choices=["download", "prepare"])
    p.add_argument("--root", required=True, help="AMI root: wav_db/ (or amicorpus/) and the annotations")
    p.add_argument("--mic", choices=["ihm", "sdm"], default="ihm")
    p.add_argument("--data_dir", help="prepare: output root")
    p.add_argument("--skip_bad", action="store_true", help="skip (and count) meetings with missing audio")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        if a.cmd == "download":
            download_ami(a.root, mic=a.mic)
            annotations_dir(Path(a.root))
        else:
            for k, v in prepare_ami(a.root, a.data_dir, a.mic, strict=not a.skip_bad).items():
                print(f"{k}\t{v}")
    except (AmiError, OSError, ValueError) as e:
        logging.error("%s", e)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
