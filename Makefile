# clipstore: `make demo` runs the main job, `make test` the tests; each builds .venv when needed.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
STORE  ?= store
DATA   ?= ../shared/data
CLI    := $(BIN)/clipstore --store $(STORE)

.PHONY: venv demo test ingest mine embed bench clean

venv: $(STAMP)

# Rebuilt when pyproject.toml changes; torch/torchvision resolve as pip finds them on this machine.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m clipstore.demo --store $(STORE) --data $(DATA)

test: $(STAMP)
	$(BIN)/python -m pytest -q

ingest: $(STAMP)
	$(BIN)/python -m clipstore.project ingest --store $(STORE) --data $(DATA)

mine: ingest
	$(BIN)/python -m clipstore.project mine --store $(STORE) --data $(DATA)

embed: ingest
	$(BIN)/python -m clipstore.project embed --store $(STORE) --data $(DATA)

bench: $(STAMP)
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/mining.py
	$(BIN)/python bench/embed.py

clean:
	rm -rf $(STORE) build *.egg-info
