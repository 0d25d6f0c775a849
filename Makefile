# espnet2-birq developer entry points.
#   make test   create .venv if missing, install the package with its test and demo extras
#               (the suite runs the demo recipe, which needs the demo's speech synthesiser), run the tests
#   make demo   the same install, then the mini_synth recipe end to end (stages 1-9) on CPU
PYTHON ?= python3
VENV ?= .venv
VENV_PY := $(VENV)/bin/python
# pip 25+ rejects ci_sdr (an ESPnet dependency) for its direct-URL extra; 24.x installs it.
PIP_PIN := pip>=23,<25
STAMP := $(VENV)/.espnet2-birq-installed
PYTEST_ARGS ?=
# e.g. make demo DEMO_ARGS="--demo_size tiny"
DEMO_ARGS ?=

.PHONY: test demo install clean-venv

$(VENV_PY):
	$(PYTHON) -m venv $(VENV)
	$(VENV_PY) -m pip install --quiet --upgrade "$(PIP_PIN)" "setuptools<74" wheel

$(STAMP): setup.cfg pyproject.toml | $(VENV_PY)
	$(VENV_PY) -m pip install --upgrade "$(PIP_PIN)" "setuptools<74" wheel
	$(VENV_PY) -m pip install -e ".[test,demo]"
	@# NIST sclite scores when found (kaldialign otherwise): Debian's sctk, where this user can install it
	@command -v sclite >/dev/null || [ -x /usr/lib/sctk/bin/sclite ] || \
		{ [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && apt-get install -y -q sctk >/dev/null 2>&1 && \
		echo "installed NIST sclite (Debian's sctk)"; } || \
		echo "NIST sclite not installed: scoring uses kaldialign (sudo apt-get install sctk for sclite)"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(VENV_PY) -m pytest $(PYTEST_ARGS)

demo: $(STAMP)
	cd egs2/mini_synth/ssl1 && ./run.sh $(DEMO_ARGS)

clean-venv:
	rm -rf $(VENV)
