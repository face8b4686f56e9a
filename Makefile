# scorefetch — see README.md. `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# make install: the system interpreter, never the first python3 on root's PATH (a pyenv or
# conda one under /root that the service user cannot even execute).
SYSTEM_PYTHON ?= /usr/bin/python3
PREFIX    ?= /opt/scorefetch
CONFDIR   ?= /etc/scorefetch
STATEDIR  ?= /var/lib/scorefetch
UNITDIR   ?= /etc/systemd/system
SYSTEMCTL ?= systemctl

.PHONY: venv demo test test-fast chaos bench lint install uninstall clean

venv: $(BIN)/scorefetch

$(BIN)/scorefetch: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,demo,metrics]'
	@touch $@

demo: venv
	$(BIN)/scorefetch demo

# Tests run in JOBS processes (pytest-xdist; each has its own servers on free ports): most
# of a test's time is spent waiting for a server or the daemon. JOBS=0 runs them in one.
JOBS ?= 2
test: venv
	$(BIN)/pytest -n $(JOBS) --dist worksteal

# No test that starts a server or the daemon (marked e2e; one that does fails): under a
# minute, for the edit-test loop.
test-fast: venv
	$(BIN)/pytest -m "not e2e" -q -n $(JOBS) --dist worksteal

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

# The import contract (no loop between the packages of daemon/scorefetch) is tests/test_layers.py.
lint: venv
	$(BIN)/ruff check daemon tests bench
	$(BIN)/ruff format --check daemon tests bench
	$(BIN)/mypy
	$(BIN)/pytest -q -p no:cacheprovider tests/test_layers.py

# The service user must be able to run the program and read its config and secrets:
# /etc/scorefetch is root:scorefetch 0750, files in it 0640 root:scorefetch.
install:
	@test "$$(id -u)" = 0 || { echo "make install must run as root" >&2; exit 1; }
	@test -x $(SYSTEM_PYTHON) && $(SYSTEM_PYTHON) -c 'import ensurepip, venv' 2>/dev/null || \
	  { echo "make install needs $(SYSTEM_PYTHON) with venv: apt-get install python3-venv" >&2; exit 1; }
	$(SYSTEM_PYTHON) -m venv --clear $(PREFIX)
	$(PREFIX)/bin/pip install --quiet '.[metrics]'
	install -m 0644 README.md $(PREFIX)/README.md
	install -d -m 0755 $(PREFIX)/contrib
	install -m 0755 contrib/mail-office contrib/post-webhook $(PREFIX)/contrib/
	id -u scorefetch >/dev/null 2>&1 || useradd --system --user-group --no-create-home \
	  --home-dir $(STATEDIR) --shell /usr/sbin/nologin scorefetch
	install -d -m 0750 -o root -g scorefetch $(CONFDIR)
	test -e $(CONFDIR)/config.yaml || \
	  install -m 0640 -o root -g scorefetch config/scorefetch.example.yaml $(CONFDIR)/config.yaml
	install -d -m 0700 -o scorefetch -g scorefetch $(STATEDIR)
	install -d -m 0755 $(UNITDIR)
	for unit in scorefetch.service scorefetch@.service; do \
	  sed -e 's|/opt/scorefetch|$(PREFIX)|g' -e 's|/etc/scorefetch|$(CONFDIR)|g' systemd/$$unit \
	    > $(UNITDIR)/$$unit.tmp && chmod 0644 $(UNITDIR)/$$unit.tmp && \
	  mv $(UNITDIR)/$$unit.tmp $(UNITDIR)/$$unit; done
	-$(SYSTEMCTL) daemon-reload

uninstall:
	@test "$$(id -u)" = 0 || { echo "make uninstall must run as root" >&2; exit 1; }
	-$(SYSTEMCTL) disable --now scorefetch.service
	rm -f $(UNITDIR)/scorefetch.service $(UNITDIR)/scorefetch@.service
	-$(SYSTEMCTL) daemon-reload
	rm -rf $(PREFIX)
	@echo "kept $(CONFDIR), $(STATEDIR) and user scorefetch (configuration, ledger and files)"

clean:
	rm -rf $(VENV) build *.egg-info daemon/*.egg-info .mypy_cache .ruff_cache .pytest_cache
