# scorefetch — see README.md. `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PREFIX ?= /opt/scorefetch

.PHONY: venv demo test test-fast chaos bench lint install uninstall clean

venv: $(BIN)/scorefetch

$(BIN)/scorefetch: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,demo]'
	@touch $@

demo: venv
	$(BIN)/scorefetch demo

test: venv
	$(BIN)/pytest

# No real-daemon (e2e) or fault-injection tests: under a minute, for the edit-test loop.
test-fast: venv
	$(BIN)/pytest -m "not e2e and not slow" -q

# Kill the real daemon at random under faults for CHAOS_MINUTES, then check every file
# landed exactly once (tests/test_chaos.py; `make test` runs it for 75 s). Disk faults
# need root (a tmpfs download_dir).
CHAOS_MINUTES ?= 10
chaos: venv
	CHAOS_SECONDS=$$(( $(CHAOS_MINUTES) * 60 )) $(BIN)/pytest tests/test_chaos.py -m chaos -s \
		--timeout=$$(( $(CHAOS_MINUTES) * 60 + 600 ))

bench: venv
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	$(BIN)/python -m bench.run $(BENCH_ARGS)

lint: venv
	$(BIN)/ruff check daemon tests bench
	$(BIN)/ruff format --check daemon tests bench
	$(BIN)/mypy

install:
	@test "$$(id -u)" = 0 || { echo "make install must run as root" >&2; exit 1; }
	$(PYTHON) -m venv $(PREFIX)
	$(PREFIX)/bin/pip install --quiet .
	id -u scorefetch >/dev/null 2>&1 || useradd --system --home-dir /var/lib/scorefetch --shell /usr/sbin/nologin scorefetch
	install -d -m 0750 /etc/scorefetch
	test -e /etc/scorefetch/config.yaml || install -m 0640 -g scorefetch config/scorefetch.example.yaml /etc/scorefetch/config.yaml
	install -m 0644 systemd/scorefetch.service systemd/scorefetch@.service /etc/systemd/system/
	systemctl daemon-reload || true

uninstall:
	@test "$$(id -u)" = 0 || { echo "make uninstall must run as root" >&2; exit 1; }
	-systemctl disable --now scorefetch.service
	rm -f /etc/systemd/system/scorefetch.service /etc/systemd/system/scorefetch@.service
	-systemctl daemon-reload
	rm -rf $(PREFIX)
	@echo "kept /etc/scorefetch and /var/lib/scorefetch (configuration, ledger and files)"

clean:
	rm -rf $(VENV) build *.egg-info daemon/*.egg-info .mypy_cache .ruff_cache .pytest_cache
