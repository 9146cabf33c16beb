# Two commands for a newcomer: `make quickstart` (install, then a real study end to end on the
# embedded defaults) and `make test` (install the test extra, then the test suite). `make docs`
# builds the documentation site.
PYTHON ?= python3
# Use the active virtual environment if there is one, else create .venv here.
VENV := $(if $(VIRTUAL_ENV),$(VIRTUAL_ENV),.venv)
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip install --quiet --disable-pip-version-check

.PHONY: install quickstart test test-e2e docs image clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

install: $(BIN)/python
	$(PIP) -e .

quickstart: install
	test -e data/quickstart.h5 || $(BIN)/hpo simulate data/quickstart.h5 --n 600 --seed 0 --quiet
	$(BIN)/hpo launch search_spaces/quickstart.yaml --workers 2
	$(BIN)/hpo promote quickstart --model xray-cluster-mass
	$(BIN)/hpo status quickstart
	@echo
	@echo "Done. Where to look:"
	@echo "  $(BIN)/hpo status quickstart          # the study's trials (Optuna storage sqlite:///hpo.db)"
	@echo "  $(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db --port 5000"
	@echo "                                        # then open the 'runs:' link hpo launch printed above"
	@echo "  model: models:/xray-cluster-mass@champion (artifacts under ./mlartifacts)"

# The suite runs on Keras' default TensorFlow backend; the training core (layers, training loop,
# device loop, fused training, checkpoints, streaming feed, TTA, saved models) runs a second time on
# the JAX backend, beside it: the TensorFlow pass spends much of its time starting `hpo` processes,
# so the two passes share the 2 cores of a laptop better than they take turns. The JAX pass's output
# is shown after the TensorFlow pass's; either failing fails `make test`.
JAX_CORE := tests/inference/test_layers.py tests/training/test_loop.py tests/training/test_device_loop.py tests/training/test_fused.py tests/launch/test_fused_worker.py tests/training/test_checkpoint.py tests/data/test_lazy.py tests/registry/test_models.py

test: $(BIN)/python
	$(PIP) -e ".[test]"
	$(BIN)/lint-imports
	@jax_log="$$(mktemp)"; \
	KERAS_BACKEND=jax $(BIN)/python -m pytest $(JAX_CORE) -p no:cacheprovider >"$$jax_log" 2>&1 & jax=$$!; \
	$(BIN)/python -m pytest; tf=$$?; \
	wait $$jax; jx=$$?; \
	echo "---- the JAX pass (KERAS_BACKEND=jax pytest $(JAX_CORE))"; cat "$$jax_log"; rm -f "$$jax_log"; \
	test $$tf -eq 0 -a $$jx -eq 0

# The end-to-end tests (worker containers, the MLflow UI in a browser, promotes against a
# PostgreSQL-backed mlflow server), and the fuzz tests again with hundreds of examples each
# instead of make test's few dozen (tests/conftest.py): minutes more, run by CI after `make test`.
test-e2e: $(BIN)/python
	$(PIP) -e ".[test]"
	HYPOTHESIS_PROFILE=e2e $(BIN)/python -m pytest -m "e2e or fuzz"

# The documentation site, from docs/ (mkdocs.yml) into site/, with warnings as errors: a broken link
# or anchor, or a page missing from the nav, fails it. The command-line page is generated from the
# typer app by docs/hooks.py. NO_MKDOCS_2_WARNING silences Material's notice about MkDocs 2.0.
docs: $(BIN)/python
	$(PIP) -e ".[docs]"
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

# The CPU worker image without image-registry access (root, a Docker engine; docs/deploy.md).
image: install
	PYTHON=$(BIN)/python docker/build-local.sh

clean:
	rm -rf hpo.db mlflow.db mlartifacts data/quickstart.h5 site
