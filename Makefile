# The README's two commands: `make demo` and `make test`. Both build .venv when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
PACKAGES := -e ".[dev,adaptive,deepspeed]" -e "lorakit_sd[test]" -e "lorakit_llm[test]" -e lorakit_labelers -e plugins/lorakit-example-labeler \
            -e plugins/lorakit-example-reward -e "plugins/lorakit-family-sana[test]" -e "lorakit_ui[test]"
STAMP := $(VENV)/.lorakit-installed
SOURCES := pyproject.toml constraints.txt lorakit_sd/pyproject.toml lorakit_llm/pyproject.toml \
           lorakit_labelers/pyproject.toml plugins/lorakit-example-labeler/pyproject.toml \
           plugins/lorakit-example-reward/pyproject.toml plugins/lorakit-family-sana/pyproject.toml \
           lorakit_ui/pyproject.toml

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_HUB_DISABLE_TELEMETRY := 1
export LORAKIT_NO_UPDATE_CHECK := 1

.PHONY: demo test lint typecheck unit docs venv clean chromium

venv: $(STAMP)

# torch goes in first and pinned: an unpinned torch resolves to a multi-GB CUDA build.
$(STAMP): $(SOURCES)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --disable-pip-version-check "torch==2.13.0"
	$(PIP) install -q --disable-pip-version-check -c constraints.txt $(PACKAGES)
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/lorakit demo --output demo-output

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

docs: $(STAMP)
	$(BIN)/mkdocs build --strict --quiet --site-dir site

# lorakit-ui's browser tests drive Debian's chromium (Playwright's own browser download is not
# reachable offline). Installed when missing and we are root; otherwise those tests skip and say why.
chromium:
	@test -x /usr/bin/chromium || { test "$$(id -u)" = 0 && command -v apt-get >/dev/null && \
	  { DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1; }; }; } || \
	  echo "chromium is not installed and cannot be installed here: the browser tests will skip"

# Two workers, one test file each at a time (module fixtures stay in one process), one
# thread per process: the tiny models are bound by Python, not by matmuls.
unit: $(STAMP) chromium
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n 2 --dist loadfile

test: lint typecheck docs unit

clean:
	rm -rf $(VENV) site demo-output
