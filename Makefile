# Entry points for developers. Each target installs into .venv first (scripts/bootstrap, idempotent).
PYTHON := .venv/bin/python
# e.g. make mutants MUTANTS_ARGS="--module worker/lease.py --limit 10"
MUTANTS_ARGS ?=

.PHONY: test mutants chaos bench

test:  ## every test: private redis-server, real Celery workers, the sandbox
	scripts/test

mutants:  ## mutation testing of the money path, files mutated in place; writes reports/mutants.json
	scripts/bootstrap
	$(PYTHON) scripts/mutants.py $(MUTANTS_ARGS)

chaos:  ## the chaos run (docs/chaos.md): 1,000 plans, 50 accounts, faults, kills, a failover; SEED=n replays
	scripts/bootstrap
	$(PYTHON) -m chaos.run --plans $(or $(CHAOS_PLANS),1000) --accounts $(or $(CHAOS_ACCOUNTS),50) \
		--redis $(or $(CHAOS_REDIS),sentinel) $(if $(SEED),--seed $(SEED)) --out reports/chaos/latest.json

bench:  ## bench/throughput.py (writes bench/results/latest.{json,md,png}), then every other bench/*.py; figures only
	scripts/bootstrap
	set -e; for script in bench/throughput.py $$(ls bench/*.py | grep -v '^bench/throughput.py$$'); do \
		echo "== $$script"; $(PYTHON) $$script; done
