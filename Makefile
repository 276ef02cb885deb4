# Two commands do all the set-up: `make lab` and `make test`. Both create .venv when it is
# missing and reuse it otherwise (re-installing only when pyproject.toml or constraints.txt change).
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.labkit-installed
PROFILE ?= $(LABKIT_PROFILE)
WORKSPACE ?= $(or $(LABKIT_WORKSPACE),workspace)

# Offline by design: a stray hub call must fail at once, not after a long time-out.
export HF_HUB_OFFLINE=1
export TRANSFORMERS_OFFLINE=1
export HF_DATASETS_OFFLINE=1
export TF_CPP_MIN_LOG_LEVEL=3
export TF_ENABLE_ONEDNN_OPTS=0

.PHONY: lab test unit notebooks venv build data clean-venv

venv: $(STAMP)

# tensorflow-privacy 0.9.0 declares pins (numpy~=1.21, dm-tree==0.1.8, tensorflow-probability~=0.22, ...)
# that cannot resolve beside TF 2.21, so it and tf-keras go in with --no-deps; the parts the labs
# use are proven to work by tests/test_environment.py.

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || command -v $(PYTHON) >/dev/null || { \
		echo "make: the kit needs Python 3.11 and '$(PYTHON)' is not on PATH; install it or run make PYTHON=/path/to/python3.11"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip==26.3
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[all]"
	$(BIN)/python -m pip install --quiet --no-deps tensorflow-privacy==0.9.0 tf-keras==2.21.0
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (labkit)" >/dev/null
	@touch $(STAMP)

data: $(STAMP)
	$(BIN)/labkit data verify

build: $(STAMP)
	$(BIN)/labkit build

# Learners work in their own copies: `labkit workspace` adds labs the workspace lacks and never
# replaces a file, so rebuilding labs/ or updating the kit cannot lose their work.
# `labkit jupyter-config` quiets JupyterLab (no news or update prompt, the kit's kernel, the start page
# opened first); `labkit workspace` also copies the course pages (START.md, GLOSSARY.md, ...) there.
lab: $(STAMP) data build
	$(BIN)/labkit jupyter-config
	LABKIT_WORKSPACE=$(abspath $(WORKSPACE)) $(BIN)/labkit workspace
	$(BIN)/jupyter lab --notebook-dir=$(WORKSPACE) --allow-root --ServerApp.open_browser=False

unit: $(STAMP)
	MPLBACKEND=Agg $(BIN)/python -m pytest -q --durations=10 tests

notebooks: $(STAMP)
	MPLBACKEND=Agg $(BIN)/python -m pytest -q -p no:cacheprovider --nbval-lax --nbval-current-env --durations=25 solutions/

# The unit tests first: they are quick and name a broken piece before the notebooks run.
test: unit notebooks

clean-venv:
	rm -rf $(VENV)
