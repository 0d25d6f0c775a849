#!/usr/bin/env python3
"""Generate the mini_synth demo corpus: synthetic English speech (espeak-ng) + Kaldi data dirs.

Splits (Kaldi data dirs under ``--data_dir``):

* ``pretrain``: unlabelled SSL pre-training set (its ``text`` is written for reference only);
* ``train``: small labelled fine-tuning set (``--train_fraction`` of pretrain, disjoint utterances);
* ``dev``: in-domain validation set (seen speakers, seen templates);
* ``test``: held-out conditions, see ``HELDOUT.md`` written next to the data.

Everything is a deterministic function of the options (``--seed`` included); the
number of parallel jobs does not change the result.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
# this repository's espnet2_birq (its data-dir writer), also when run outside a recipe
# directory (no path.sh) or before `pip install -e .`
sys.path.insert(1, str(Path(__file__).resolve().parents[4]))
import text_gen  # noqa: E402
from espnet2_birq.utils.datadir import write_data_dir as write_kaldi_dir, write_map  # noqa: E402

CORPUS_VERSION = 1
FS = 16000
SPLITS = ("pretrain", "train", "dev", "test")

# espeak-ng base voices (accents) and voice variants (!v/...).  Variants with
# breath noise (f2, f3, f5, Alicia, whisper, ...) are avoided: their output is not
# reproducible from run to run.
SEEN_ACCENTS = ("en-us", "en", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-us-nyc")
HELDOUT_ACCENTS = ("en-gb-x-gbclan", "en-gb-x-gbcwmd")
SEEN_VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m8", "f1", "klatt", "klatt2", "klatt4",
                 "Andy", "Annie", "aunty", "belinda", "david", "ed", "grandma", "norbert", "paul",
                 "rob", "steph", "travis")
HELDOUT_VARIANTS = ("m7", "f4", "john", "iven", "grandpa")
PITCH_RANGE = (35, 65)     # espeak pitch (0-100, default 50)
INTONATION_RANGE = (30, 80)  # espeak pitch range (0-100, default 50)
RATES = tuple(range(145, 206, 5))  # words per minute (default 175)

log = logging.getLogger("mini_synth")


# --------------------------------------------------------------------------- plan
def speaker_id(accent: str, variant: str, pitch: int, prange: int, rate: int) -> str:
    # fixed-width numeric suffix: no speaker id is a prefix of another one, so that
    # sorting utterance ids keeps each speaker's utterances contiguous
    acc = accent.replace("-", "").lower()
    return f"{acc}-{variant.lower()}-p{pitch:02d}i{prange:02d}-r{rate:03d}"


def make_speakers(rng: random.Random, voices: List[Tuple[str, str]], n: int) -> List[dict]:
    if n > len(voices):
        raise ValueError(f"asked for {n} speakers but only {len(voices)} voices are available")
    spks = []
    for accent, variant in rng.sample(voices, n):
        pitch = rng.randint(*PITCH_RANGE)
        prange = rng.randint(*INTONATION_RANGE)
        rate = rng.choice(RATES)
        spks.append(dict(spk=speaker_id(accent, variant, pitch, prange, rate), accent=accent,
                         variant=variant, voice=f"{accent}+{variant}", pitch=pitch,
                         pitch_range=prange, rate=rate))
    return spks


def make_plan(cfg: dict) -> Dict[str, List[dict]]:
    seed = cfg["seed"]
    srng = random.Random(f"mini_synth-{seed}-speakers")
    seen_voices = [(a, v) for a in SEEN_ACCENTS for v in SEEN_VARIANTS]
    seen_spk = make_speakers(srng, seen_voices, cfg["num_speakers"])
    # test voices: unseen accent (any variant) or seen accent with an unseen variant
    ho_acc = [(a, v) for a in HELDOUT_ACCENTS for v in SEEN_VARIANTS + HELDOUT_VARIANTS]
    ho_var = [(a, v) for a in SEEN_ACCENTS for v in HELDOUT_VARIANTS]
    nt = cfg["num_test_speakers"]
    test_spk = make_speakers(srng, ho_acc, (nt + 1) // 2) + make_speakers(srng, ho_var, nt // 2)

    sizes = dict(pretrain=cfg["num_pretrain"], train=cfg["num_train"], dev=cfg["num_dev"],
                 test=cfg["num_test"])
    plan: Dict[str, List[dict]] = {}
    seen_texts = set()
    for split in SPLITS:
        rng = random.Random(f"mini_synth-{seed}-{split}")
        spks = test_spk if split == "test" else seen_spk
        gen = text_gen.TextGenerator(rng, "heldout" if split == "test" else "seen")
        order = list(range(len(spks)))
        utts = []
        for i in range(sizes[split]):
            if i % len(spks) == 0:
                rng.shuffle(order)  # balanced speakers, random order
            spk = spks[order[i % len(spks)]]
            for _ in range(1000):
                template, category, sent = gen.sample()
                text = text_gen.normalize(sent)
                if split != "test" or text not in seen_texts:
                    break
            else:
                raise RuntimeError("could not draw a test sentence unseen in the other splits")
            utt = f"{spk['spk']}_{split}{i:05d}"
            utts.append(dict(utt=utt, split=split, text=text, synth_text=sent.lower(),
                             template=template, category=category,
                             snr=round(rng.uniform(cfg["min_snr"], cfg["max_snr"]), 2),
                             peak_db=round(rng.uniform(-12.0, -3.0), 2), **spk))
            if split != "test":
                seen_texts.add(text)
        plan[split] = sorted(utts, key=lambda u: u["utt"].encode())
    return plan


# --------------------------------------------------------------------------- synthesis
_SYNTH = None


def _init_worker():
    """Synthesis workers stay small (no torch): each utterance is synthesized in a
    fork of the worker, and forking a small process is cheap."""
    global _SYNTH
    from espeak_synth import get_synth

    _SYNTH = get_synth()


def _synth_job(u: dict) -> Tuple[str, int, bytes]:
    wav = _SYNTH.synth(u["synth_text"], u["voice"], rate=u["rate"], pitch=u["pitch"],
                       pitch_range=u["pitch_range"])
    return u["utt"], _SYNTH.native_rate, wav.tobytes()


def _seed_of(*parts) -> int:
    return int.from_bytes(hashlib.sha256("|".join(map(str, parts)).encode()).digest()[:8], "little")


def render(u: dict, cfg: dict, native: np.ndarray, native_rate: int) -> np.ndarray:
    """Post-process one synthesized utterance: 16 kHz -> peak level -> white noise."""
    from espeak_synth import resample

    wav = resample(native, native_rate, FS).astype(np.float64) / 32768.0
    peak = np.abs(wav).max()
    if peak < 1e-3:
        raise RuntimeError(f"{u['utt']}: synthesized audio is silent (voice {u['voice']})")
    wav *= 10 ** (u["peak_db"] / 20) / peak
    if cfg["add_noise"]:
        rng = np.random.default_rng(_seed_of(cfg["seed"], u["utt"]))
        active = np.abs(wav) > 0.01 * np.abs(wav).max()
        power = np.mean(wav[active] ** 2)
        wav += rng.standard_normal(wav.size) * np.sqrt(power / 10 ** (u["snr"] / 10))
    return np.clip(np.round(wav * 32768.0), -32768, 32767).astype(np.int16)


def _write_wav(path: str, wav: np.ndarray):
    import soundfile as sf

    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}.wav"
    sf.write(tmp, wav, FS, subtype="PCM_16")
    os.replace(tmp, path)  # atomic: a wav file either is complete or does not exist


def wav_path(audio_dir: Path, u: dict) -> str:
    return str(audio_dir / "wav" / u["split"] / u["spk"] / f"{u['utt']}.wav")


def synthesize(plan: Dict[str, List[dict]], cfg: dict, audio_dir: Path, nj: int) -> Dict[str, int]:
    import soundfile as sf
    import torch

    torch.set_num_threads(1)
    allu = {u["utt"]: u for split in SPLITS for u in plan[split]}
    n = len(allu)
    nsamples: Dict[str, int] = {}
    for utt, u in allu.items():  # wav files left by an earlier (interrupted) run are complete
        p = wav_path(audio_dir, u)
        if os.path.exists(p):
            nsamples[utt] = sf.info(p).frames
    todo = [u for utt, u in allu.items() if utt not in nsamples]
    log.info(f"synthesizing {len(todo)} of {n} utterances with {nj} job(s) into {audio_dir}/wav")
    t0 = time.time()
    step = max(1, len(todo) // 10)

    def _done(k, utt, rate, data):
        u = allu[utt]
        wav = render(u, cfg, np.frombuffer(data, dtype=np.int16), rate)
        _write_wav(wav_path(audio_dir, u), wav)
        nsamples[utt] = wav.size
        if k % step == 0 or k == len(todo):
            el = time.time() - t0
            log.info(f"  {k}/{len(todo)} utterances ({k / max(el, 1e-9):.1f} utt/s, {el:.0f} s elapsed)")

    if todo:
        import multiprocessing as mp

        # synthesis runs in "spawn" workers (even for nj=1): they do not inherit this
        # process' memory (torch), which keeps the per-utterance fork in espeak_synth cheap
        with mp.get_context("spawn").Pool(max(1, nj), initializer=_init_worker) as pool:
            for k, res in enumerate(pool.imap_unordered(_synth_job, todo, chunksize=16), 1):
                _done(k, *res)
    el = time.time() - t0
    log.info(f"synthesis done: {n} utterances, {sum(nsamples.values()) / FS / 3600:.3f} h of audio, "
             f"{el:.1f} s ({n / max(el, 1e-9):.1f} utt/s)")
    return nsamples


# --------------------------------------------------------------------------- outputs
def write_data_dir(d: Path, utts: List[dict], audio_dir: Path, nsamples: Dict[str, int]):
    # the project's data-dir writer (C-sorted, validated)
    tmp = d.with_name(f".{d.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    write_kaldi_dir(
        tmp,
        wav_scp={u["utt"]: str(wav_path(audio_dir, u)) for u in utts},
        utt2spk={u["utt"]: u["spk"] for u in utts},
        text={u["utt"]: u["text"] for u in utts},
        utt2dur={u["utt"]: nsamples[u["utt"]] / FS for u in utts},
    )
    # extra per-utterance metadata (not a Kaldi file; ignored by the tools)
    write_map(tmp / "utt2category", {u["utt"]: u["category"] for u in utts})
    if d.exists():
        shutil.rmtree(d)
    os.replace(tmp, d)


def heldout_doc(cfg: dict, plan: Dict[str, List[dict]]) -> str:
    spk = {s: sorted({u["spk"] for u in plan[s]}) for s in SPLITS}
    voices = {s: sorted({u["voice"] for u in plan[s]}) for s in SPLITS}
    cats: Dict[str, int] = {}
    for u in plan["test"]:
        cats[u["category"]] = cats.get(u["category"], 0) + 1
    pairs = ", ".join(f"{r} + {d}" for r, d in text_gen.HELDOUT_ROOM_DEVICE)
    return f"""# mini_synth corpus (version {CORPUS_VERSION})

Options: `{json.dumps(cfg, sort_keys=True)}`

| split | utterances | speakers | voices |
|---|---|---|---|
""" + "".join(f"| {s} | {len(plan[s])} | {len(spk[s])} | {len(voices[s])} |\n" for s in SPLITS) + f"""
## Held out in `test` (never in `pretrain`, `train` or `dev`)

* Voices: every test speaker uses an espeak-ng voice (accent + variant) that no other split
  uses: accents {', '.join(HELDOUT_ACCENTS)} (any variant), or variants
  {', '.join(HELDOUT_VARIANTS)} (on a seen accent). Test voices: {', '.join(voices['test'])}.
* Sentence templates: {', '.join(text_gen.HELDOUT_TEMPLATES)} (vocabulary fully seen,
  new phrase combinations) -- category `heldout_template`.
* Word combinations: the (room, device) pairs {pairs} only co-occur in test
  (switch commands) -- category `heldout_combination`.
* Every test sentence is textually different from every pretrain/train/dev sentence.

Test categories (`data/test/utt2category`): {json.dumps(cats, sort_keys=True)}.
`dev` uses the seen speakers and the seen templates (in-domain).
"""


# --------------------------------------------------------------------------- main
def get_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_dir", default="data", help="where the Kaldi data dirs are written")
    p.add_argument("--audio_dir", default="downloads/mini_synth", help="where wav files are written")
    p.add_argument("--num_pretrain", type=int, default=2500)
    p.add_argument("--train_fraction", type=float, default=0.1,
                   help="size of the labelled train set relative to pretrain")
    p.add_argument("--num_dev", type=int, default=100)
    p.add_argument("--num_test", type=int, default=200)
    p.add_argument("--num_speakers", type=int, default=40, help="speakers of pretrain/train/dev")
    p.add_argument("--num_test_speakers", type=int, default=10)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--add_noise", type=lambda s: s.lower() in ("1", "true", "yes"), default=True,
                   help="add white noise at a random SNR in [min_snr, max_snr] dB")
    p.add_argument("--min_snr", type=float, default=20.0)
    p.add_argument("--max_snr", type=float, default=40.0)
    p.add_argument("--nj", type=int, default=max(1, min(4, os.cpu_count() or 1)))
    p.add_argument("--overwrite", type=lambda s: s.lower() in ("1", "true", "yes"), default=False,
                   help="regenerate even if a corpus made with other options exists")
    return p


def main(argv=None):
    args = get_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s (%(module)s) %(levelname)s: %(message)s")
    cfg = dict(version=CORPUS_VERSION, seed=args.seed, num_pretrain=args.num_pretrain,
               num_train=int(round(args.num_pretrain * args.train_fraction)), num_dev=args.num_dev,
               num_test=args.num_test, num_speakers=args.num_speakers,
               num_test_speakers=args.num_test_speakers, add_noise=args.add_noise,
               min_snr=args.min_snr, max_snr=args.max_snr)
    if min(cfg["num_pretrain"], cfg["num_train"], cfg["num_dev"], cfg["num_test"]) < 1:
        raise SystemExit("every split needs at least one utterance")
    data_dir = Path(args.data_dir).resolve()
    audio_dir = Path(args.audio_dir).resolve()
    marker = data_dir / ".mini_synth.done"
    cfg_txt = json.dumps(cfg, sort_keys=True)
    stamp = cfg_txt + f" audio_dir={audio_dir}"

    if marker.exists() and not args.overwrite:
        if marker.read_text().strip() == stamp and all((data_dir / s / "wav.scp").exists() for s in SPLITS):
            log.info(f"mini_synth corpus already generated in {data_dir} with the same options: skipping")
            return 0
        raise SystemExit(f"{data_dir} holds a mini_synth corpus generated with other options "
                         f"({marker.read_text().strip()}); remove it or pass --overwrite true")

    audio_cfg = audio_dir / "config.json"
    if audio_cfg.exists() and audio_cfg.read_text().strip() != cfg_txt:
        if not args.overwrite:
            raise SystemExit(f"{audio_dir} holds audio generated with other options "
                             f"({audio_cfg.read_text().strip()}); remove it or pass --overwrite true")
        log.info(f"removing audio generated with other options in {audio_dir}/wav")
        shutil.rmtree(audio_dir / "wav", ignore_errors=True)
    audio_dir.mkdir(parents=True, exist_ok=True)
    audio_cfg.write_text(cfg_txt + "\n")
    # leftovers of an interrupted run (complete wav files are kept and reused)
    for tmp in list((audio_dir / "wav").glob("*/*/*.tmp*.wav")) + list(data_dir.glob(".*.tmp*")):
        log.info(f"removing leftover {tmp}")
        shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink()
    marker.unlink(missing_ok=True)

    plan = make_plan(cfg)
    log.info("plan: " + ", ".join(f"{s}={len(plan[s])}" for s in SPLITS) +
             f"; vocabulary {len(text_gen.vocabulary())} words")
    nsamples = synthesize(plan, cfg, audio_dir, args.nj)

    # sanity: duration must be plausible for the number of words
    for split in SPLITS:
        for u in plan[split]:
            nw, dur = len(u["text"].split()), nsamples[u["utt"]] / FS
            if not (0.12 * nw <= dur <= 1.0 * nw + 1.5):
                log.warning(f"{u['utt']}: implausible duration {dur:.2f} s for {nw} words")

    data_dir.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        write_data_dir(data_dir / split, plan[split], audio_dir, nsamples)
        hours = sum(nsamples[u["utt"]] for u in plan[split]) / FS / 3600
        log.info(f"wrote {data_dir / split}: {len(plan[split])} utterances, {hours:.3f} h")
    local = data_dir / "local" / "mini_synth"
    local.mkdir(parents=True, exist_ok=True)
    (local / "HELDOUT.md").write_text(heldout_doc(cfg, plan))
    (local / "vocabulary.txt").write_text("".join(w + "\n" for w in text_gen.vocabulary()), encoding="utf-8")
    with open(local / "utterances.jsonl", "w") as f:
        for split in SPLITS:
            for u in plan[split]:
                f.write(json.dumps(dict(u, num_samples=nsamples[u["utt"]]), sort_keys=True) + "\n")
    marker.write_text(stamp + "\n")
    log.info(f"mini_synth corpus ready: {data_dir} (held-out conditions: {local / 'HELDOUT.md'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
