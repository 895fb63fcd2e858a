# The README's two commands: `make demo` and `make test`. Both work from a fresh clone on a fresh
# Debian machine: they create .venv, install the package with its dev extras (which builds the
# JupyterLab extension with the node that is on the machine), register the kernel, and install
# the Debian packages they need.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
UI := ui-tests
UI_STAMP := $(UI)/node_modules/.installed
# Evidently, beside the project's venv: the drift checks are held to its verdicts, and it needs pandas < 3
EVIDENTLY := .venv-evidently/.installed
DEMO_OUT := .mlops/demo
# pytest workers (pytest-xdist, a test file each): one worker leaves a core idle about half of the time (it waits
# on servers, kernels and clusters); two took the suite from 45.6 to 20.7 min on a 2-core machine
TEST_WORKERS ?= 2

.PHONY: demo test ui-test lab-check bench clean system-deps

# the labextension's sources too: the wheel's copy of the built extension is what JupyterLab (and ui-tests) load
LAB_SOURCES := $(wildcard labextension/src/*.ts labextension/src/*.tsx labextension/src/components/*.tsx labextension/style/*.css labextension/schema/*.json)

$(STAMP): pyproject.toml labextension/package.json $(LAB_SOURCES)
	@$(MAKE) --no-print-directory system-deps
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@# as a wheel's install would: an editable one compiles none of our modules, and where PYTHONDONTWRITEBYTECODE
	@# is set each process (CLI, kernel, Ray worker, fork server) would compile them again as it imports them
	$(BIN)/python -m compileall -q mlops_jupyter
	@# rfc3987-syntax only validates URI formats for jsonschema, and costs every kernel ~2 s of imports
	$(BIN)/python -m pip uninstall --quiet --yes rfc3987-syntax
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (mlops-jupyter)"
	touch $(STAMP)

# git (runs record their commit), node (builds the labextension), chromium (the browser test), buildah and
# mmdebstrap (the serving image test builds a real image on a Debian base it makes once), curl (the README's
# serving example, which its test runs), prometheus (the drift alert test scrapes a package; installing it
# starts no service)
system-deps:
	@missing=""; \
	command -v git >/dev/null || missing="$$missing git"; \
	command -v node >/dev/null || missing="$$missing nodejs npm"; \
	test -x /usr/bin/chromium || missing="$$missing chromium"; \
	command -v buildah >/dev/null || missing="$$missing buildah"; \
	command -v mmdebstrap >/dev/null || missing="$$missing mmdebstrap"; \
	command -v curl >/dev/null || missing="$$missing curl"; \
	command -v promtool >/dev/null || missing="$$missing prometheus"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

test: $(STAMP) $(UI_STAMP) $(EVIDENTLY)
	@$(MAKE) --no-print-directory system-deps
	@$(MAKE) --no-print-directory lab-check
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --durations=15
	@$(MAKE) --no-print-directory ui-test

$(EVIDENTLY):
	$(PYTHON) -m venv .venv-evidently
	.venv-evidently/bin/python -m pip install --quiet "evidently>=0.7.23,<0.8" "pandas<3" pyarrow
	touch $@

# the labextension's own checks, seconds: prettier + eslint, and jest unit tests (tags, the runs poll's row keeping);
# its node modules came with the package's install (the build installs them)
lab-check: $(STAMP)
	cd labextension && ../$(BIN)/jlpm lint && ../$(BIN)/jlpm test

# galata + Playwright for the browser tests; they drive Debian's chromium (system-deps), no browser download
$(UI_STAMP): $(UI)/package.json $(UI)/yarn.lock | $(STAMP)
	cd $(UI) && ../$(BIN)/jlpm install
	touch $@

# the sidebar in a real JupyterLab (ui-tests/): screenshots, the lab's log and the report in ui-tests/test-results/
ui-test: $(STAMP) $(UI_STAMP) $(EVIDENTLY)
	cd $(UI) && ../$(BIN)/jlpm playwright test

demo: $(STAMP)
	@mkdir -p $(DEMO_OUT)
	@for nb in example_notebooks/*.ipynb; do \
	  echo "== $$nb"; \
	  $(BIN)/papermill --engine mlops --cwd example_notebooks --log-level WARNING --progress-bar "$$nb" "$(DEMO_OUT)/$$(basename $$nb)" || exit 1; \
	done
	@echo "== pipeline: example_notebooks/04_pipeline.ipynb -> $(DEMO_OUT)/pipeline"
	$(BIN)/mlops export example_notebooks/04_pipeline.ipynb --out $(DEMO_OUT)/pipeline
	$(BIN)/mlops pipeline run $(DEMO_OUT)/pipeline
	$(BIN)/mlops runs --last 10
	@echo "executed notebooks: $(DEMO_OUT)/ · open the runs with the command above, or in JupyterLab: $(BIN)/jupyter lab"

bench: $(STAMP) $(EVIDENTLY)
	@for b in bench/bench_*.py; do echo "== $$b"; $(BIN)/python "$$b" || exit 1; done

clean:
	rm -rf $(VENV) .mlops labextension/node_modules labextension/lib mlops_jupyter/labextension \
	  $(UI)/node_modules $(UI)/test-results $(UI)/playwright-report
