# micromets — the README's two set-up commands are `make demo` and `make test`.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
OSD_DIR := src/micromets/viewer/static/vendor/openseadragon

.PHONY: install demo test bench stress viewer-assets system-deps clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[train,test]"
	touch $(STAMP)

install: $(STAMP) viewer-assets  ## create .venv with micromets and its CLI (idempotent)

# OpenSeadragon comes from the npm registry, never copied into the repo.
viewer-assets: $(OSD_DIR)/openseadragon.min.js
$(OSD_DIR)/openseadragon.min.js:
	@if command -v npm >/dev/null 2>&1; then \
	  mkdir -p build/npm $(OSD_DIR) && \
	  npm install --silent --no-audit --no-fund --prefix build/npm openseadragon@5 && \
	  cp -r build/npm/node_modules/openseadragon/build/openseadragon/* $(OSD_DIR)/ ; \
	else echo "npm not found: the viewer front end (OpenSeadragon) is not installed"; fi

demo: install  ## run the main job on the bundled demo case
	$(BIN)/micromets demo --out demo-out

# Debian's chromium + chromedriver (PDF report, browser tests) and poppler-utils (PDF checks); no browser download.
system-deps:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null && command -v pdftoppm >/dev/null; then :; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver poppler-utils >/dev/null; \
	else echo "chromium, chromium-driver or poppler-utils missing (install them as root): browser and PDF tests will skip"; fi

# The suite in TEST_WORKERS processes (pytest-xdist; 2 on the 2-core CI machine: 7.0 min against 10.5 in one).
TEST_WORKERS ?= 2
test: install system-deps  ## the whole test suite
	$(BIN)/python -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS)

bench: install  ## speed, memory and accuracy benchmark on 15 phantom nodes (about 6 min, plus the naive baseline)
	$(BIN)/micromets bench

stress: install  ## longer reliability suite (batch kills, bad files)
	$(BIN)/python -m pytest -q -m slow tests

clean:
	rm -rf $(VENV) build demo-out
