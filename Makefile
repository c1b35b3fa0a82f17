# otelpipe: `make demo` runs the pipeline on embedded defaults, `make test` runs every test.
VENV   ?= .venv
PYTHON ?= python3
BIN    := $(VENV)/bin

.PHONY: demo test unit install kafka-up kafka-down otelcol bench bench-tail bench-peer faults fuzz clean

demo: install
	$(BIN)/otelpipe demo

test: install kafka-up
	$(BIN)/python -m pytest -q -ra

unit: install
	$(BIN)/python -m pytest -q tests/unit

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml native/Cargo.toml native/Cargo.lock $(wildcard native/src/*.rs)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

kafka-up: install
	$(BIN)/otelpipe kafka up --secure

kafka-down:
	@if [ -x $(BIN)/otelpipe ]; then $(BIN)/otelpipe kafka down; fi

# The OpenTelemetry Collector docs/collector.yaml is checked with (needs Go; built once, cached
# outside the tree in ~/.cache/otelpipe/otelcol or $OTELPIPE_OTELCOL_CACHE): prints its path.
otelcol: install
	$(BIN)/python -m streams.tools.collector_build

bench: install kafka-up
	$(BIN)/python bench/throughput.py

bench-tail: install kafka-up
	$(BIN)/python bench/tail_sampling.py

# otelpipe beside the OpenTelemetry Collector (built with ocb from the Go module proxy, cached outside the
# tree) on the same topic: spans per CPU-second of each and the ratio; skipped where Go is missing.
bench-peer: install kafka-up
	$(BIN)/python bench/peer.py

faults: install kafka-up
	$(BIN)/python bench/fault_report.py

# Every fuzz target (tests/fuzz/) for FUZZ_SECONDS each;
# FUZZ_ARGS passes more options to tests/fuzz/run.py (e.g. --collect, --target spans_proto).
FUZZ_SECONDS ?= 300
FUZZ_JOBS    ?= 2
FUZZ_ARGS    ?=

fuzz: install
	$(BIN)/python tests/fuzz/run.py --all --differential --seconds $(FUZZ_SECONDS) --jobs $(FUZZ_JOBS) $(FUZZ_ARGS)

clean: kafka-down
	rm -rf .otelpipe
