# mf-harness: every set-up step lives here, so a fresh clone needs only `make demo` / `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# On a CUDA machine set TORCH_SPEC to the build you want (or pre-install torch in .venv).
TORCH_SPEC ?= torch==2.13.0
SHARED ?= $(abspath ../shared)
export NLTK_DATA ?= $(SHARED)/data/nltk_data
export TOKENIZERS_PARALLELISM ?= false
export HF_HUB_OFFLINE ?= 1
export PIP_DISABLE_PIP_VERSION_CHECK = 1
STAMP := $(VENV)/.mf-harness-setup

.PHONY: setup demo test test-slow bench clean-venv

setup: $(STAMP)

$(STAMP): pyproject.toml requirements/lean.txt Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q $(TORCH_SPEC)
	@$(BIN)/python -c "import torch; print('torch==' + torch.__version__.split('+')[0])" > $(VENV)/constraints.txt
	@# lmms-eval / lm-eval without their heavyweight requirements (torchvision, wandb, yt-dlp, openai, ...)
	$(BIN)/pip install -q --no-deps lmms-eval==0.7.3 lm-eval==0.4.13
	@# pip reports lmms-eval's unmet heavyweight requirements here; that is expected and exits 0
	$(BIN)/pip install -q -c $(VENV)/constraints.txt -r requirements/lean.txt
	$(BIN)/pip install -q --no-deps -e .
	@$(BIN)/python -c "import mf_harness, lmms_eval, lm_eval, transformers; assert int(transformers.__version__.split('.')[0]) >= 5" 
	@touch $(STAMP)

demo: setup
	$(BIN)/python -m mf_harness.demo

test: setup
	$(BIN)/python -m pytest -q

test-slow: setup
	$(BIN)/python -m pytest -q -m slow

bench: setup
	@set -e; for f in bench/bench_*.py; do $(BIN)/python $$f; done

clean-venv:
	rm -rf $(VENV)
