# Two commands on a fresh machine: `make demo` and `make test` (both install what they need).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
OUT ?= runs/demo
DATASET ?=
DATASET_ARG := $(if $(DATASET),--dataset $(DATASET),)
PYTEST_ARGS ?=

.PHONY: help venv java demo etl train promote serve stop test bench bench-etl clean monitor monitoring-files drift

help:
	@echo "make demo [DATASET=<MovieLens folder>] [OUT=runs/demo]  run the pipeline end to end"
	@echo "make test                                              run the test suite"
	@echo "make serve OUT=<dir> / make stop OUT=<dir>             local TorchServe on OUT's challenger model"
	@echo "make promote OUT=<dir>                                 gate: challenger -> champion"
	@echo "make bench                                             serving benchmark (benchmarks/results/serving.json)"
	@echo "make bench-etl                                         ETL throughput benchmark"
	@echo "make monitor OUT=<dir>                                 Prometheus + load against make serve; latency PNGs in OUT/monitoring"
	@echo "make drift OUT=<dir>                                   drift report of OUT/gateway logs vs training data"
	@echo "make monitoring-files                                  regenerate the rule file and the dashboard JSON"

java:
	@command -v java >/dev/null 2>&1 || { echo "error: Java 17 is required (Spark, TorchServe)." \
	  "Install it: sudo apt-get install -y openjdk-17-jre-headless (or run .ci/run, which does)"; exit 1; }
	@java -version 2>&1 | grep -qE 'version "(17|1[89]|2[0-9])' || { echo "error: Java 17+ is required;" \
	  "found: $$(java -version 2>&1 | head -1)"; exit 1; }

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

venv: $(VENV)/.installed

MODEL_URI ?= models:/hybrid-recommender@challenger

demo: venv java
	$(PY) -m etl run $(DATASET_ARG) --out $(OUT)
	$(PY) -m training run --out $(OUT)
	$(PY) -m archives build --out $(OUT) --model-uri $(MODEL_URI)
	$(PY) -m archives serve --out $(OUT)
	$(PY) -m archives demo-requests --out $(OUT); rc=$$?; \
	  $(PY) -m archives stop --out $(OUT); exit $$rc

serve: venv java
	$(PY) -m archives build --out $(OUT) --model-uri $(MODEL_URI)
	$(PY) -m archives serve --out $(OUT)

stop: venv
	$(PY) -m archives stop --out $(OUT)

etl: venv java
	$(PY) -m etl run $(DATASET_ARG) --out $(OUT)

train: venv java
	$(PY) -m training run --out $(OUT)

promote: venv
	$(PY) -m training promote --out $(OUT)

test: venv java
	$(PY) -m pytest $(PYTEST_ARGS)

BENCH_ARGS ?=
bench: venv java
	$(PY) -m benchmarks.serving_bench $(BENCH_ARGS)

bench-etl: venv java
	$(PY) -m benchmarks.etl_bench

MONITOR_ARGS ?=
monitor: venv
	$(PY) -m monitoring monitor --out $(OUT) $(MONITOR_ARGS)

drift: venv
	$(PY) -m monitoring drift --out $(OUT)

monitoring-files: venv
	$(PY) -m monitoring generate

clean:
	rm -rf runs spark-warehouse metastore_db derby.log
