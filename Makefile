# `make repro` and `make test` are all a newcomer needs (see README).
VENV := .venv
BIN := $(VENV)/bin
UV_VERSION := 0.13.8
export UV_COMPILE_BYTECODE := 1
export UV_PROJECT_ENVIRONMENT := $(VENV)
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: setup setup-team repro test test-fast lint compare-cells plots mlflow-ui mlflow-server mlflow-server-pg clean

# GPU=1 (e.g. `make repro GPU=1`) installs TensorFlow with CUDA instead of the CPU build, same
# version (uv.lock); the stamps differ, so switching back and forth re-syncs .venv.
GPU ?=
SYNC := uv sync --frozen $(if $(GPU),--no-group cpu --group gpu)
FLAVOUR := $(if $(GPU),gpu,cpu)

$(BIN)/.installed-$(FLAVOUR): pyproject.toml uv.lock
	@command -v uv >/dev/null 2>&1 || python3 -m pip install --quiet "uv==$(UV_VERSION)"
	$(SYNC)
	@rm -f $(BIN)/.installed-*
	@touch $@

setup: $(BIN)/.installed-$(FLAVOUR)  ## Create .venv with the pinned dependencies (uv.lock).

$(BIN)/.installed-team-$(FLAVOUR): $(BIN)/.installed-$(FLAVOUR)
	$(SYNC) --group team
	@touch $@

setup-team: $(BIN)/.installed-team-$(FLAVOUR)  ## Add the PostgreSQL driver for a team's tracking server.

repro: setup  ## Run the whole DVC pipeline on the default offline data (params checked first).
	python -m pipeline validate
	dvc repro

lint: setup
	ruff check pipeline tests

# Tests run in one worker process per core (pytest-xdist): on 2 cores the fast suite took 124 s
# instead of 182 s, because much of a test's time is process start-up and I/O, not compute.
test: lint setup-team  ## Lint, then run every test (slow ones included; what CI runs).
	pytest -n auto --dist loadscope

test-fast: lint setup-team  ## The quick loop: tests that train, download or start no service (< 2 min).
	pytest -n auto -m "not slow"

# SimpleRNN vs LSTM vs GRU (and a bidirectional GRU, except for the causal language model) on
# one task, each as a DVC experiment in a temporary copy (params.yaml is left alone), then the
# compare report. Commit your changes first. Quicker: SET="-S train.$(TASK).epochs=1".
TASK ?= classification
SET ?=
compare-cells: setup  ## Compare cells on TASK (default classification) and open the report.
	for cell in simple_rnn lstm gru; do \
		dvc exp run --temp evaluate_$(TASK) -S train.$(TASK).cell=$$cell $(SET) || exit 1; done
	$(if $(filter language_model,$(TASK)),,dvc exp run --temp evaluate_$(TASK) \
		-S train.$(TASK).cell=gru -S train.$(TASK).bidirectional=true $(SET))
	python -m pipeline compare $(TASK) --last $(if $(filter language_model,$(TASK)),3,4) --open

# `dvc plots show` as a page that draws offline: the Vega scripts come once from the npm registry
# (pinned, sha512-checked) into dvc_plots/vendor/ (git-ignored), which .dvc/plots/offline.html
# loads instead of a CDN.
plots: setup  ## Write dvc_plots/index.html (loss, gradient norms, gradient flow), viewable offline.
	python -m pipeline vendor-vega --out dvc_plots/vendor
	dvc plots show --html-template .dvc/plots/offline.html -o dvc_plots

# The UI over the local store, lean like mlflow-server (FACTS: plain `mlflow ui` starts ~17
# processes, ~3.5 GB); first the link to each task's runs table (the UI otherwise opens its
# GenAI view).
mlflow-ui: setup  ## Browse runs in the local store at http://127.0.0.1:5000 (1 worker)
	@MLFLOW_TRACKING_URI=sqlite:///mlflow.db python -m pipeline ui-links
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false mlflow ui --backend-store-uri sqlite:///mlflow.db \
		--host 127.0.0.1 --port 5000 --workers 1

# Lean tracking server (FACTS: 2 processes, ~0.5 GB, ~7 s to healthy) over the same local store;
# use it with MLFLOW_TRACKING_URI=http://127.0.0.1:5000. Artifacts of experiments it creates go
# to mlruns/ (git-ignored) through its artifact proxy.
mlflow-server: setup  ## Tracking server at http://127.0.0.1:5000 (sqlite mlflow.db, 1 worker)
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false mlflow server \
		--backend-store-uri sqlite:///mlflow.db --artifacts-destination mlruns \
		--host 127.0.0.1 --port 5000 --workers 1

# A team's server: MLflow on a throwaway PostgreSQL cluster (Debian's postgresql), artifacts in
# .mlflow-server/; Ctrl-C stops all it started. Needs `apt-get install -y postgresql`.
mlflow-server-pg: setup-team  ## Tracking server at http://127.0.0.1:5000 on PostgreSQL (port 5433)
	python -m pipeline server --backend postgresql --root .mlflow-server --port 5000 --db-port 5433

clean:
	rm -rf $(VENV)
