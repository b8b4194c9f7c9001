# Every target is one line; CI (.ci/run, .gitlab-ci.yml) calls these same targets.
PY := .venv/bin/python
VENV_STAMP := .venv/.installed
PROMTOOL := .venv/bin/promtool

.PHONY: setup tools protos lint typecheck test demo up down bench bench-train bench-predict bench-stream bench-report clean

setup: $(VENV_STAMP)

$(VENV_STAMP): pyproject.toml constraints.txt
	python3.11 -m venv .venv && $(PY) -m pip install -q --upgrade pip && $(PY) -m pip install -q -c constraints.txt -e '.[dev]' && touch $(VENV_STAMP)

tools: $(PROMTOOL)

$(PROMTOOL): | $(VENV_STAMP)
	bash scripts/install_promtool.sh $@

protos: setup
	$(PY) -m grpc_tools.protoc -I. --python_out=. --pyi_out=. --grpc_python_out=. protos/*.proto

lint: setup
	$(PY) -m ruff check . && $(PY) -m ruff format --check .

typecheck: setup
	$(PY) -m mypy

test: setup tools
	$(PY) -m pytest -q

demo: setup
	$(PY) -m scripts.demo

up: setup
	$(PY) -m scripts.demo --up

down: setup
	$(PY) -m scripts.demo --down

bench: bench-train bench-predict bench-stream

bench-train: setup
	$(PY) -m benchmarks.bench_train

bench-predict: setup
	$(PY) -m benchmarks.bench_predict

bench-stream: setup
	$(PY) -m benchmarks.bench_stream

bench-report: setup
	$(PY) -m benchmarks.bench_report

clean:
	rm -rf .venv var .mypy_cache .ruff_cache .pytest_cache
