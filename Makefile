# lemmy-cluster: the two commands of the README's quick start, and a few more.
#   make demo   set up, validate the bundled cluster.toml, generate hosts/, show what was made
#   make test   set up (system packages too, as root), then lint, type-check and run every test
#   make bench  print the measured figures (and write bench-results.json)

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
SYNTH  := $(BIN)/synth

.PHONY: setup system-deps demo test lint bench golden clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

system-deps:
	bash scripts/install-system-deps.sh

demo: setup
	@echo "== synth validate cluster.toml"
	@$(SYNTH) validate cluster.toml
	@echo
	@echo "== synth generate cluster.toml   (hosts/ is committed: normally nothing changes)"
	@$(SYNTH) generate cluster.toml
	@echo
	@echo "== synth generate examples/large.toml --out build/demo-large"
	@rm -rf build/demo-large
	@$(SYNTH) generate examples/large.toml --out build/demo-large
	@echo
	@echo "== build/demo-large/hosts/edge1/default.nix (a frontend)"
	@cat build/demo-large/hosts/edge1/default.nix
	@echo
	@echo "== a mistake is reported with file, field and fix; nothing is written"
	@sed 's/roles = \["backend"\]/roles = ["backnd"]/' examples/large.toml > build/demo-broken.toml
	@$(SYNTH) generate build/demo-broken.toml --out build/demo-broken || true
	@echo
	@echo "Deploy: add each machine's hosts/<m>/hardware-configuration.nix and configuration.nix (boot loader)"
	@echo "and your key ([ssh] keys), commit, then see the safe order (database first, frontends last, half at a"
	@echo "time; every machine built before any is activated):  synth deploy --dry-run cluster.toml"
	@echo "and run it without --dry-run."

lint: setup
	$(BIN)/ruff check synth tests nixos-tests scripts
	$(BIN)/ruff format --check synth tests nixos-tests scripts
	$(BIN)/mypy synth

# Workers: the live tests mostly wait on engines (Patroni's timings, etcd, TCP timeouts), so more
# than the cores. Each test file runs on one worker (--dist loadfile): a live test module's tests
# share its hosts, and every module has a subnet, bridge and namespace prefix of its own.
JOBS ?= 4

test: system-deps setup lint
	$(BIN)/python -m pytest -n $(JOBS) --dist loadfile

bench: setup
	bash scripts/install-system-deps.sh --bench
	$(BIN)/python scripts/bench.py

# After an intended change of the generated output: regenerate, then REVIEW `git diff tests/golden`.
golden: setup
	for ex in single small large; do $(SYNTH) generate examples/$$ex.toml --out tests/golden/$$ex; done
	$(SYNTH) generate tests/golden/storage.toml --out tests/golden/storage
	$(SYNTH) generate tests/golden/backup-host.toml --out tests/golden/backup-host
	$(SYNTH) generate tests/golden/backup-storage.toml --out tests/golden/backup-storage

clean:
	rm -rf $(VENV) build .pytest_cache .mypy_cache .ruff_cache .hypothesis bench-results.json
