# Each target delegates to scripts/ or the CLI, so the same steps work without make.
.PHONY: install run test chaos bench lint proto demo services-up services-down clean help

## install        .venv with both packages editable and the dev tools; grpcurl, buf in .tools/bin
install:
	./scripts/install.sh

## run            serve on the embedded store at 127.0.0.1:50051 (installs first if needed)
run: .venv/.installed
	.venv/bin/metaas serve

## test           lint, then every test, with Cassandra and the DynamoDB emulator
test:
	./scripts/test.sh

## chaos          the reliability tests with minute-long outages, the fuzzing and the crash tests
chaos:
	METAAS_CHAOS_OUTAGE_S=60 ./scripts/test.sh tests/chaos tests/e2e/test_fuzz.py tests/e2e/test_durability.py

## bench          the benchmarks (bench/README.md)
bench: .venv/.installed
	./scripts/bench.sh

## lint           the static checks only (ruff, ruff format, mypy, buf lint, stubs up to date)
lint: .venv/.installed
	./scripts/lint.sh

## proto          regenerate client/metaas/v1 from proto/
proto: .venv/.installed
	./scripts/gen-proto.sh

## services-up    start a local Cassandra, the DynamoDB emulator and Kafka
services-up: .venv/.installed
	./scripts/services.sh up

## services-down  stop the local Cassandra, the DynamoDB emulator and Kafka
services-down:
	./scripts/services.sh down

## demo           send demo traffic to a running server
demo: .venv/.installed
	.venv/bin/metaas demo

## clean          remove .venv, .tools, data and the caches
clean:
	rm -rf .venv .tools data .pytest_cache .mypy_cache .ruff_cache

## help           this list
help:
	@sed -n 's/^## //p' $(MAKEFILE_LIST)

.venv/.installed: pyproject.toml client/pyproject.toml scripts/install.sh
	./scripts/install.sh
