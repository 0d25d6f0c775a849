#!/usr/bin/env python3
"""Text-only language-model data for the mini_synth demo (no audio).

The demo's counterpart of an LM corpus such as LibriSpeech's ``librispeech-lm-norm``:
``--num_sentences`` sentences from the seen templates and seen (room, device) pairs
(:class:`text_gen.TextGenerator` in ``seen`` mode), written in Kaldi ``text`` format
(``lm<index> SENTENCE``) for ssl_asr.sh's ``--lm_train_text``.

The LM must not know the evaluation sets: a sentence equal to any transcript of the
``--exclude`` files (the dev and test ``text``) is left out and counted. The held-out
templates and (room, device) pairs of the test set never occur, because the generator
in ``seen`` mode cannot produce them.

    python local/make_lm_text.py --num_sentences 20000 --seed 1 \
        --exclude data/dev/text data/test/text --out data/local/other_text/text
"""

import argparse
import logging
import os
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import text_gen  # noqa: E402


def read_transcripts(path: Path) -> set:
    sentences = set()
    with open(path, encoding="utf-8") as f:
        for line in f:
            parts = line.rstrip("\n").split(maxsplit=1)
            if len(parts) == 2:
                sentences.add(" ".join(parts[1].split()))
    return sentences


def make_lm_text(num_sentences: int, seed: int, exclude: set):
    """Yields (key, sentence) for each of ``num_sentences`` draws that is not in ``exclude``."""
    # A stream of its own: the corpus splits use "mini_synth-<seed>-<split>".
    gen = text_gen.TextGenerator(random.Random(f"mini_synth-{seed}-lm_text"), "seen")
    for index in range(num_sentences):
        _, _, sentence = gen.sample()
        sentence = text_gen.normalize(sentence)
        if sentence in exclude:
            continue
        yield f"lm{index:07d}", sentence


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num_sentences", type=int, required=True, help="sentences drawn (before exclusion)")
    parser.add_argument("--seed", type=int, default=1, help="the corpus seed (local/data.sh --seed)")
    parser.add_argument("--exclude", type=Path, nargs="*", default=[],
                        help="Kaldi text files whose sentences the LM text must not contain")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s (make_lm_text) %(levelname)s: %(message)s")
    if args.num_sentences < 1:
        parser.error(f"--num_sentences must be >= 1, got {args.num_sentences}")
    exclude = set()
    for path in args.exclude:
        if not path.is_file():
            parser.error(f"--exclude {path}: not found (run the corpus stage first)")
        exclude |= read_transcripts(path)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + f".tmp.{os.getpid()}")
    written = 0
    with open(tmp, "w", encoding="utf-8") as f:
        for key, sentence in make_lm_text(args.num_sentences, args.seed, exclude):
            f.write(f"{key} {sentence}\n")
            written += 1
    tmp.replace(args.out)
    logging.info(
        f"{args.out}: {written} sentences; {args.num_sentences - written} of {args.num_sentences} "
        f"left out because they equal a transcript of {', '.join(map(str, args.exclude)) or '(nothing)'}"
    )


if __name__ == "__main__":
    main()
