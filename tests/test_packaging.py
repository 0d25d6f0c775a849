"""Packaging metadata: LICENSE, CITATION.cff, setup.cfg extras and the Makefile install."""

import configparser
import hashlib
import re
from pathlib import Path

import yaml

import espnet2_birq

REPO_ROOT = Path(__file__).resolve().parents[1]


def _setup_cfg():
    cfg = configparser.ConfigParser()
    cfg.read(REPO_ROOT / "setup.cfg")
    return cfg


def _requirements(value: str):
    """Requirement names of a setup.cfg list (comments and blank lines dropped)."""
    names = []
    for line in value.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.append(re.split(r"[<>=!~;\[ ]", line, maxsplit=1)[0].lower())
    return names


def test_license_is_apache_2():
    text = (REPO_ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text
    assert "END OF TERMS AND CONDITIONS" in text
    # the text published at https://www.apache.org/licenses/LICENSE-2.0.txt, unchanged
    assert hashlib.sha256(text.encode()).hexdigest() == (
        "cfc7749b96f63bd31c3c42b5c471bf756814053e847c10f3eb003417bc523d30")
    assert _setup_cfg()["metadata"]["license"] == "Apache-2.0"


def test_citation_cff():
    cff = yaml.safe_load((REPO_ROOT / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0" and cff["type"] == "software"
    assert str(cff["version"]) == espnet2_birq.__version__
    assert cff["license"] == "Apache-2.0"
    assert cff["title"].startswith("espnet2-birq") and cff["authors"] and cff["message"]
    arxiv = {}
    for ref in cff["references"]:
        assert ref["title"] and ref["authors"] and ref["year"], ref
        for author in ref["authors"]:
            assert author.get("family-names") and author.get("given-names"), author
        ids = [i["value"] for i in ref["identifiers"] if i["value"].startswith("arXiv:")]
        arxiv[ids[0]] = ref
    assert set(arxiv) == {"arXiv:2509.15430", "arXiv:2202.01855", "arXiv:2211.07321", "arXiv:2412.08548"}
    assert arxiv["arXiv:2509.15430"]["title"].startswith("BiRQ:")
    assert arxiv["arXiv:2211.07321"]["title"].startswith("MT4SSL:")
    for key, ref in arxiv.items():
        assert ref["url"] == f"https://arxiv.org/abs/{key.split(':')[1]}"


def test_demo_synthesiser_is_an_extra():
    cfg = _setup_cfg()
    required = _requirements(cfg["options"]["install_requires"])
    extras = cfg["options.extras_require"]
    assert "espeakng-loader" not in required
    assert _requirements(extras["demo"]) == ["espeakng-loader"]
    assert "kaldialign" in required
    assert "pytest" in _requirements(extras["test"])
    # make test and make demo install both extras, re-installing when setup.cfg changes
    makefile = (REPO_ROOT / "Makefile").read_text()
    assert 'pip install -e ".[test,demo]"' in makefile
    assert re.search(r"^\$\(STAMP\): setup\.cfg pyproject\.toml", makefile, re.M)
    assert re.search(r"^test: \$\(STAMP\)", makefile, re.M)
    assert re.search(r"^demo: \$\(STAMP\)", makefile, re.M)
