# The verbs the README names. Each one installs what it needs first.
.PHONY: simulate test lint unit faults bench bench-ensemble bench-matcher bench-flood bench-broker venv services clean

VENV := .venv/bin
ARGS ?=

simulate: venv  ## the main job: the five services and a simulated community, then a report
	@scripts/services.sh rabbitmq redis
	$(VENV)/microte demo $(ARGS)

test: venv  ## every check and test CI runs
	@scripts/services.sh rabbitmq redis postgres
	$(MAKE) --no-print-directory lint
	$(VENV)/pytest --durations=25 $(ARGS)

lint: venv
	$(VENV)/ruff check shared services microte tests bench
	$(VENV)/mypy shared microte services
	$(VENV)/lint-imports

unit: venv  ## the tests that need no servers, in seconds
	$(VENV)/pytest tests/unit tests/properties $(ARGS)

faults: venv  ## the fault suite alone: private servers, faults and attacks at round 20-25 (README, "Tests")
	$(VENV)/pytest tests/faults $(ARGS)

bench: venv  ## the clearing benchmark (README, "Benchmarks")
	$(VENV)/python bench/clearing.py $(ARGS)

bench-ensemble: venv  ## the five services as processes against a bare-RabbitMQ floor (README, "Benchmarks")
	@scripts/services.sh rabbitmq redis
	$(VENV)/python bench/ensemble.py $(ARGS)

bench-matcher: venv  ## the matcher benchmark: a slot read from Redis, cleared and published, objects vs columns
	@scripts/services.sh rabbitmq redis
	$(VENV)/python bench/matcher.py $(ARGS)

bench-flood: venv  ## one household floods order-intake: the others' order-ack latency with and without it
	@scripts/services.sh rabbitmq redis
	$(VENV)/python bench/flood.py $(ARGS)

bench-broker: venv  ## RabbitMQ's CPU per message, persistent against transient, over many durable queues
	@scripts/services.sh rabbitmq redis
	$(VENV)/python bench/broker.py $(ARGS)

venv:
	@scripts/bootstrap.sh

clean:
	rm -rf .venv .pytest_cache .mypy_cache .ruff_cache .hypothesis var
