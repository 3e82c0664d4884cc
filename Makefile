# clipstore: `make demo` runs the main job, `make test` the tests; each builds .venv when needed.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
STORE  ?= store
DATA   ?= ../shared/data
CLI    := $(BIN)/clipstore --store $(STORE)

.PHONY: venv demo test test-fast lint ingest mine embed pixels pseudolabel eval train bench gauntlet clean

venv: $(STAMP)
	@echo "venv: $(VENV) is up to date with pyproject.toml (run commands as $(BIN)/clipstore, or after: source $(BIN)/activate)"

# Rebuilt when pyproject.toml changes; torch/torchvision resolve as pip finds them on this machine.
$(STAMP): pyproject.toml
	@echo "venv: building $(VENV) (first time: a few minutes and a few GB, mostly torch)"
	@test -x $(BIN)/python || { echo "venv: [1/3] creating $(VENV) with $(PYTHON)"; $(PYTHON) -m venv $(VENV); }
	@echo "venv: [2/3] upgrading pip"
	@$(BIN)/python -m pip install --quiet --upgrade pip
	@echo "venv: [3/3] installing clipstore and its dependencies (pip install -e '.[dev]')"
	@$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)
	@echo "venv: done"

demo: $(STAMP)
	$(CLI) demo --data $(DATA)

lint: $(STAMP)
	$(BIN)/ruff check .

test: lint
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

ingest: $(STAMP)
	$(CLI) project ingest --data $(DATA)

mine: ingest
	$(CLI) project mine --data $(DATA)

embed: ingest
	$(CLI) project embed --data $(DATA)

pixels: ingest
	$(CLI) project pixels --data $(DATA)
pseudolabel: mine
	$(CLI) project pseudolabel --data $(DATA)

MODEL ?= tiny-vit
eval: embed
	$(CLI) eval suite rs --model $(MODEL)
	$(CLI) eval suite fashion --model $(MODEL)

# the stand-in "pretrained" CLIP: CLIP from a random init on the synthetic source domain (lr 5e-4, as
# CLIP's pre-training for ViTs; the default 5e-5 is S-CLIP's fine-tuning rate), a few epochs (docs/train.md)
TRAIN_SYNTH ?= out/synth_source
TRAIN_IMAGES ?= 1000
train: $(STAMP)
	$(CLI) -q synth $(TRAIN_SYNTH) --domain source --images $(TRAIN_IMAGES)
	$(CLI) -q ingest karpathy $(TRAIN_SYNTH)/captions
	$(CLI) train --method clip --corpus synth_source --model tiny-vit --epochs 3 --batch-size 64 --lr 5e-4 --val-every 1

bench: $(STAMP)
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/mining.py
	$(BIN)/python bench/embed.py
	$(BIN)/python bench/pixels.py
	$(BIN)/python bench/knn.py
	$(BIN)/python bench/eval.py
	$(BIN)/python bench/pseudolabel.py

gauntlet: $(STAMP)
	$(BIN)/python bench/gauntlet.py

clean:
	rm -rf $(STORE) build *.egg-info
