# Two commands set everything up on a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PYTHON := $(VENV)/bin/python
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

# transformers' shared model tests of the installed version, from its source distribution (tests/test_transformers_common.py).
TRANSFORMERS_TESTS := tests/transformers_tests/VERSION

.PHONY: install browser test demo app clean

$(VENV)/.installed: setup.py
	test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet $(TORCH_PINS)
	$(PYTHON) -m pip install --quiet $(TORCH_PINS) -e ".[dev,app]"
	touch $@

$(TRANSFORMERS_TESTS): $(VENV)/.installed tests/transformers_tests/fetch.py
	$(PYTHON) tests/transformers_tests/fetch.py

install: $(VENV)/.installed $(TRANSFORMERS_TESTS)

# The app's browser test drives Debian's headless Chromium; as root this installs it, otherwise it says how.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
	  else \
	    echo "The app's browser test needs Chromium: sudo apt-get install chromium chromium-driver (see README)"; \
	  fi; }

test: install browser
	$(PYTHON) -m pytest -q tests

demo: install
	$(PYTHON) examples/demo.py

app: install
	$(PYTHON) examples/app.py

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache tests/transformers_tests/test_*_common.py $(TRANSFORMERS_TESTS)
