# Each target delegates to scripts/ or the CLI, so the same steps work without make.
.PHONY: install run test chaos bench lint proto demo services-up services-down clean

install:
	./scripts/install.sh

run: .venv/.installed
	.venv/bin/metaas serve

test:
	./scripts/test.sh

chaos:
	METAAS_CHAOS_OUTAGE_S=60 ./scripts/test.sh tests/chaos tests/e2e/test_fuzz.py tests/e2e/test_durability.py

bench: .venv/.installed
	./scripts/bench.sh

lint: .venv/.installed
	./scripts/lint.sh

proto: .venv/.installed
	./scripts/gen-proto.sh

services-up: .venv/.installed
	./scripts/services.sh up

services-down:
	./scripts/services.sh down

demo: .venv/.installed
	.venv/bin/metaas demo

clean:
	rm -rf .venv .tools data .pytest_cache .mypy_cache .ruff_cache

.venv/.installed: pyproject.toml client/pyproject.toml scripts/install.sh
	./scripts/install.sh
