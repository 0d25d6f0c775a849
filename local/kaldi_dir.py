#!/usr/bin/env python3
"""Validate Kaldi data directories (sorted C-locale order, consistent
utt2spk/spk2utt/text/segments/wav.scp), a pure-Python fallback for
utils/validate_data_dir.sh --no-feats.

    local/kaldi_dir.py [--no-text] DIR [DIR ...]

Writing is done from Python via espnet2_birq.dataprep.kaldi.write_data_dir.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from espnet2_birq.dataprep.kaldi import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
