# mf-harness: every set-up step lives here, so a fresh clone needs only `make demo` / `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
LOCK   := requirements/lock.txt
# Packages the lock leaves to an environment you prepared (e.g. `make setup LOCK_SKIP=torch` after
# installing a CUDA torch into .venv yourself). CI and the README's commands use the whole lock.
LOCK_SKIP ?=
LATEST ?= .venv-latest
SHARED ?= $(abspath ../shared)
export NLTK_DATA ?= $(SHARED)/data/nltk_data
export TOKENIZERS_PARALLELISM ?= false
export HF_HUB_OFFLINE ?= 1
export PIP_DISABLE_PIP_VERSION_CHECK = 1
STAMP := $(VENV)/.mf-harness-setup
# The drift canary's half of the suite: everything that touches upstream code paths (hooks, generate,
# caches, the lmms-eval CLI and evaluator, the scorers), without the long sweeps and trainings.
CANARY_TESTS ?= tests/test_spec.py tests/test_hooks.py tests/test_coverage.py tests/test_multispec.py \
	tests/test_plugin.py tests/test_model.py tests/test_families.py tests/test_mfr_task.py \
	tests/test_capability_scoring.py tests/test_analysis.py tests/test_cli.py

.PHONY: setup lock demo test test-slow test-latest bench clean-venv

setup: $(STAMP)

# One exact, hashed resolution (requirements/lock.txt), then this project editable; see requirements/lock.py.
$(STAMP): pyproject.toml $(LOCK) requirements/lock.py Makefile
	$(PYTHON) requirements/lock.py install --venv $(VENV) --skip "$(LOCK_SKIP)"
	@touch $(STAMP)

# Re-resolve the ranges (pyproject.toml / requirements/*.txt) to today's newest releases and rewrite
# the lock. Then run `make test` (and commit the lock only if it passes).
lock:
	$(PYTHON) requirements/lock.py lock

demo: setup
	$(BIN)/python -m mf_harness.demo --overwrite  # out/demo is this target's own output folder

test: setup
	$(BIN)/python -m pytest -q

test-slow: setup
	$(BIN)/python -m pytest -q -m slow

# Drift canary: a second venv with the newest releases the ranges allow, and the suite's
# upstream-facing half there. Not part of CI (which stays on the lock); run it before a release,
# after `make lock`, and when a dependency ships a new version.
test-latest:
	$(PYTHON) requirements/lock.py ranges --venv $(LATEST)
	$(LATEST)/bin/python -m pip install -q --no-deps --no-build-isolation -e .
	@$(LATEST)/bin/python -c "import transformers, lmms_eval, lm_eval, torch, filelock; from importlib.metadata import version as v; \
		print('test-latest:', ', '.join(f'{p} {v(p)}' for p in ('torch', 'transformers', 'lmms-eval', 'lm-eval', 'filelock', 'datasets', 'accelerate')))"
	$(LATEST)/bin/python -m pytest -q -p no:cacheprovider $(CANARY_TESTS)

bench: setup
	@set -e; for f in bench/bench_*.py; do $(BIN)/python $$f; done

clean-venv:
	rm -rf $(VENV) $(LATEST)
