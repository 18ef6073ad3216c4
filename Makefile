# The two commands of the README: `make demo` (main job) and `make test` (test suite).
# Both set up ./.venv first; setup is idempotent and takes seconds once done.
PY := .venv/bin/python
PYTEST_ARGS ?=

.PHONY: setup setup-browser demo test test-fast

setup:
	@bash scripts/setup.sh

# The tests also want headless Chromium (Debian's chromium and chromium-driver) for the viewer's
# browser tests: setup installs it when it can, and those tests skip when it could not.
setup-browser:
	@bash scripts/setup.sh --browser

demo: setup
	.venv/bin/ldcache demo

# pytest exits 5 when a selection collects no test: that is not a failure of the suite.
test: setup-browser
	$(PY) -m pytest -q -ra $(PYTEST_ARGS); rc=$$?; if [ $$rc -eq 5 ]; then exit 0; else exit $$rc; fi

# The suite without the tests marked slow (training, torchrun, dask clusters, S3, kills): for development.
test-fast: setup-browser
	$(PY) -m pytest -q -ra -m "not slow" $(PYTEST_ARGS); rc=$$?; if [ $$rc -eq 5 ]; then exit 0; else exit $$rc; fi
