#!/usr/bin/env python3
"""Resumable, checksum-verified HTTP download (shared by the corpus recipes).

    local/download.py URL DEST [--md5 HEX | --sha256 HEX] [--size BYTES]
                      [--retries N] [--extract_to DIR]

Partial data is kept in DEST.part and resumed with an HTTP Range request on
re-run; a verified file gets a DEST.done marker and is skipped afterwards.
Implementation: espnet2_birq/dataprep/download.py.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from espnet2_birq.dataprep.download import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
