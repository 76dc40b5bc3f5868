# Two commands: `make run` (the study on the embedded default data) and `make test`.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
# The install is skipped while pyproject.toml and the lock are unchanged: the stamp is keyed on
# their hash.
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml requirements.lock | sha256sum | cut -c1-16)
# requirements.lock: every transitive dependency of the image, with hashes (`make lock`). The
# install here takes its versions as constraints, hashes stripped: pip turns any hash in a
# constraints file into --require-hashes for everything, and the dev extras are not in the lock.
CONSTRAINTS := $(VENV)/constraints.txt
# uv resolves the lock for the image's platform from PyPI, whatever machine runs it.
UV ?= uv
LOCK_FLAGS := --python-version 3.11 --python-platform x86_64-manylinux_2_28 --generate-hashes \
	--index-url https://pypi.org/simple --no-config --custom-compile-command "make lock"

.PHONY: run test lint format clean lock
.DEFAULT_GOAL := run

$(STAMP): pyproject.toml requirements.lock
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	sed -e '/--hash=/d' -e 's/ \\$$//' requirements.lock > $(CONSTRAINTS)
	$(PY) -m pip install --quiet -c $(CONSTRAINTS) -e '.[dev]'
	# animal-mnist ships the embedded default data; --no-deps because it declares tensorflow,
	# which excon never imports (we read the package's data files directly).
	$(PY) -m pip install --quiet --no-deps -c $(CONSTRAINTS) animal-mnist==0.4
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

# Re-resolve requirements.lock (needs uv: `pip install uv`): pyproject.toml's dependencies and
# everything they pull in, then the packages installed without dependencies.
lock:
	$(UV) pip compile pyproject.toml $(LOCK_FLAGS) -q -o requirements.lock
	$(UV) pip compile infra/docker/no-deps.in --no-deps $(LOCK_FLAGS) --no-header -q -o $(VENV)/no-deps.lock
	cat $(VENV)/no-deps.lock >> requirements.lock
