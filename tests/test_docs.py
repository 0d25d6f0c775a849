"""The project's documentation stands alone: no internal briefs cited, referenced files exist."""

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

def tracked_text_files():
    out = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    for name in out.splitlines():
        if name.endswith((".py", ".md", ".sh", ".yaml", ".cfg", ".toml")) or "/" not in name:
            path = REPO / name
            if path.is_file() and not path.is_symlink():
                yield name, path


def test_no_internal_method_brief_is_cited():
    brief = "METHOD" + ".md"  # spelled apart so this file does not cite it
    citing = [name for name, path in tracked_text_files()
              if brief in path.read_text(errors="replace")]
    assert citing == []


def test_method_page_is_linked_and_its_file_references_exist():
    readme = (REPO / "README.md").read_text()
    assert "(docs/method.md)" in readme
    method = (REPO / "docs" / "method.md").read_text()
    for section in ("## BEST-RQ", "## BiRQ", "## What the project adds"):
        assert section in method, section
    paths = set(re.findall(r"`((?:espnet2_birq|bench|egs2|utils|tests)/[\w./-]+\.(?:py|sh|yaml))`", method))
    assert paths, "docs/method.md names no files"
    missing = [p for p in sorted(paths) if not (REPO / p).exists()]
    assert missing == []


def test_how_lhotse_is_used_is_said_once():
    # One place (README.md "Corpora"), not a copy per corpus README that drifts.
    assert "lhotse's manifests" in (REPO / "README.md").read_text()
    for readme in sorted((REPO / "egs2").glob("*/ssl1/README.md")):
        assert "lhotse's manifests" not in readme.read_text(), readme


def test_config_paths_in_tool_docstrings_exist():
    for tool in sorted((REPO / "espnet2_birq" / "bin").glob("*.py")):
        for path in re.findall(r"--config ((?:egs2/[\w./-]+/)?conf/[\w./-]+\.yaml)", tool.read_text()):
            assert (REPO / path).is_file(), f"{tool.name}: {path}"


def test_docs_stay_short():
    # README: what a newcomer reads in minutes; BENCHMARKS: current figures, history in git.
    assert len((REPO / "README.md").read_bytes()) <= 12 * 1024
    assert len((REPO / "BENCHMARKS.md").read_text().splitlines()) <= 300


def test_python_tooling_stays_within_its_budget():
    # The command-line tooling around the method (data prep, features, scoring, job runners):
    # maintained tools (ESPnet, lhotse, kaldiio, soxr, sclite/kaldialign) do the rest.
    files = [*(REPO / "espnet2_birq").glob("bin/*.py"), *(REPO / "espnet2_birq").glob("utils/*.py"),
             *(REPO / "espnet2_birq").glob("dataprep/*.py"), *(REPO / "utils").glob("*.py")]
    lines = sum(len(f.read_text().splitlines()) for f in files)
    assert lines <= 3500, f"{lines} lines of Python tooling (budget 3,500)"
