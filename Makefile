# Two commands: `make run` (the study on the embedded default data) and `make test`.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
# The install is skipped while pyproject.toml is unchanged: the stamp is keyed on its hash.
STAMP := $(VENV)/.installed-$(shell sha256sum pyproject.toml | cut -c1-16)

.PHONY: run test lint format clean
.DEFAULT_GOAL := run

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[dev]'
	# animal-mnist ships the embedded default data; --no-deps because it declares tensorflow,
	# which excon never imports (we read the package's data files directly).
	$(PY) -m pip install --quiet --no-deps animal-mnist==0.4
	# torchattacks (tests only: cross-checks FGSM/PGD) pins requests~=2.25, which the MLOps
	# stack cannot use; the attacks themselves need only torch.
	$(PY) -m pip install --quiet --no-deps torchattacks==3.5.1
	@rm -f $(VENV)/.installed-*
	@touch $@

# The whole study as the DVC DAG (dvc.yaml): prepare -> pretrain/probe/evaluate per method ->
# report. A second `make run` is a no-op; `dvc exp run -S method.tau=0.6` reruns only excon.
# All stages of one `dvc repro` group under one MLflow parent run (made only when something
# is out of date, so a no-op run leaves no empty parent behind).
run: $(STAMP)
	@export PATH="$(CURDIR)/$(VENV)/bin:$$PATH" DVC_NO_ANALYTICS=1; \
	if dvc status --quiet; then echo "dvc: pipeline up to date, nothing to run"; else \
	  EXCON_PARENT_RUN_ID=$$($(PY) -m excon.tracking start-parent) || exit 1; \
	  export EXCON_PARENT_RUN_ID; dvc repro || exit 1; fi
	@$(PY) -m excon.show_report

test: $(STAMP) lint
	$(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check excon components pipelines tests benchmarks
	$(VENV)/bin/ruff format --check excon components pipelines tests benchmarks

format: $(STAMP)
	$(VENV)/bin/ruff format excon components pipelines tests benchmarks
	$(VENV)/bin/ruff check --fix excon components pipelines tests benchmarks

clean:
	rm -rf runs data/prepared
