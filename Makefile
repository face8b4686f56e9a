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
BINDIR    ?= /usr/local/bin
SYSTEMCTL ?= systemctl

.PHONY: venv demo test test-fast chaos bench bench-targets lint lock install uninstall clean

venv: $(BIN)/scorefetch

# The service's dependencies at the versions of requirements.lock (what make install puts
# in production), so the tests run against them; the dev tools are not locked.
$(BIN)/scorefetch: pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	sed -n 's/^\([A-Za-z0-9._-]*==[^ ]*\).*/\1/p' requirements.lock > $(VENV)/constraints.txt
	$(BIN)/pip install --quiet -c $(VENV)/constraints.txt -e '.[dev,demo,metrics]'
	@touch $@

demo: venv
	$(BIN)/scorefetch demo

# Tests run in JOBS processes (pytest-xdist; each has its own servers on free ports): most
# of a test's time is spent waiting for a server or the daemon. JOBS=0 runs them in one.
JOBS ?= 2
test: venv
	$(BIN)/pytest -n $(JOBS) --dist worksteal --durations=10

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

# This tree against BENCH_BASE (the first release unless told), interleaved, with ratios
# (bench/compare.py; the base's venv is built once under .bench-cache/). `make bench-targets`
# runs bench/run.py: this tree alone against the spec's absolute targets.
BENCH_BASE ?= 405af45
bench: venv
	$(BIN)/pip install --quiet -c $(VENV)/constraints.txt -e '.[dev,bench]'
	$(BIN)/python -m bench.compare --base $(BENCH_BASE) $(BENCH_ARGS)

bench-targets: venv
	$(BIN)/pip install --quiet -c $(VENV)/constraints.txt -e '.[dev,bench]'
	$(BIN)/python -m bench.run $(BENCH_ARGS)

# The import contract (no loop between the packages of daemon/scorefetch) is tests/test_layers.py.
lint: venv
	$(BIN)/ruff check daemon tests bench
	$(BIN)/ruff format --check daemon tests bench
	$(BIN)/mypy
	$(BIN)/pytest -q -p no:cacheprovider tests/test_layers.py

# requirements.lock: what `make install` installs, every file's hash pinned. Resolved by the
# interpreter make install uses (a newer python3 would pick versions the system one refuses).
lock:
	$(SYSTEM_PYTHON) -m venv .venv-lock
	.venv-lock/bin/pip install --quiet 'pip-tools>=7.4'
	.venv-lock/bin/pip-compile --quiet --upgrade --generate-hashes --allow-unsafe --strip-extras \
	  --extra metrics --no-emit-index-url --no-emit-find-links --output-file requirements.lock \
	  pyproject.toml
	rm -rf .venv-lock

# The service user must be able to run the program and read its config and secrets:
# /etc/scorefetch is root:scorefetch 0750, files in it 0640 root:scorefetch.
# scripts/install.sh: a new release beside the old, switched by one rename; edited units kept.
install:
	@test "$$(id -u)" = 0 || { echo "make install must run as root" >&2; exit 1; }
	@test -x $(SYSTEM_PYTHON) && $(SYSTEM_PYTHON) -c 'import ensurepip, venv' 2>/dev/null || \
	  { echo "make install needs $(SYSTEM_PYTHON) with venv: apt-get install python3-venv" >&2; exit 1; }
	@PREFIX='$(PREFIX)' CONFDIR='$(CONFDIR)' STATEDIR='$(STATEDIR)' UNITDIR='$(UNITDIR)' \
	  BINDIR='$(BINDIR)' SYSTEM_PYTHON='$(SYSTEM_PYTHON)' SYSTEMCTL='$(SYSTEMCTL)' \
	  bash scripts/install.sh

uninstall:
	@test "$$(id -u)" = 0 || { echo "make uninstall must run as root" >&2; exit 1; }
	-$(SYSTEMCTL) disable --now scorefetch.service
	-$(SYSTEMCTL) stop 'scorefetch@*.service'
	-$(SYSTEMCTL) disable $$($(SYSTEMCTL) list-units --all --plain --no-legend 'scorefetch@*' \
	  2>/dev/null | awk '{print $$1}')
	rm -f $(UNITDIR)/scorefetch.service $(UNITDIR)/scorefetch@.service
	rm -f $(UNITDIR)/scorefetch.service.new $(UNITDIR)/scorefetch@.service.new
	-$(SYSTEMCTL) daemon-reload
	test "$$(readlink $(BINDIR)/scorefetch)" != "$(PREFIX)/bin/scorefetch" || rm -f $(BINDIR)/scorefetch
	rm -rf $(PREFIX) $(PREFIX).releases
	@echo "kept $(CONFDIR), $(STATEDIR), user scorefetch (configuration, ledger and files)"
	@echo "and the drop-ins $(UNITDIR)/scorefetch.service.d, $(UNITDIR)/scorefetch@.service.d"

clean:
	rm -rf $(VENV) .venv-lock build *.egg-info daemon/*.egg-info .mypy_cache .ruff_cache .pytest_cache
