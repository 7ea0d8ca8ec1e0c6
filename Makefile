# Quickstart: `make demo` and `make test` (each sets up .venv first if needed).
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SHARED ?= ../shared/data
DEMO_OUT ?= runs/demo
# The seed protocol: corpus = positives of the first 5,000 rows, the first 100 queries.
DEMO_LOCAL := $(SHARED)/msmarco-dev/dev.jsonl
DEMO_DATASET := $(if $(wildcard $(DEMO_LOCAL)),$(DEMO_LOCAL),namespace-Pt/msmarco)
export RAY_USAGE_STATS_ENABLED ?= 0
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup demo test test-slow lint format bench bench-memory clean

$(STAMP): requirements.txt requirements-dev.txt constraints.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first, pinned: an unpinned torch pulls a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -r requirements.txt -r requirements-dev.txt -c constraints.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

setup: $(STAMP)

# BM25's top 100, the top 20 of each rescored by MiniLM embeddings (a real second stage, offline),
# then the cross-encoder machinery (minilm-smoke: a random head) on the same candidates.
demo: $(STAMP)
	$(VENV)/bin/rerank-ray run --dataset $(DEMO_DATASET) --corpus-rows 5000 --num-queries 100 \
		--retriever bm25 --top-k 100 --reranker bi:minilm --reranker minilm-smoke \
		--rerank-top-k 20 --rerank-depths 5,10,20 --out $(DEMO_OUT) --force

test: $(STAMP)
	$(PY) -m pytest

# End to end in their own processes and clusters (kills, autoscaling, job submission, benches
# at a small size); CI runs it after `make test`.
test-slow: $(STAMP)
	$(PY) -m pytest -m slow

lint: $(STAMP)
	$(VENV)/bin/ruff check rerank_ray jobs tests bench
	$(VENV)/bin/ruff format --check rerank_ray jobs tests bench

format: $(STAMP)
	$(VENV)/bin/ruff format rerank_ray jobs tests bench
	$(VENV)/bin/ruff check --fix rerank_ray jobs tests bench

bench: $(STAMP)
	$(PY) bench/embed_throughput.py --passages 2000 --queries 20
	$(PY) bench/rerank_throughput.py --queries 50 --depth 20
	$(PY) bench/topk.py --corpus 500000 --queries 1000 --k 100
	$(PY) bench/object_store.py
	$(PY) bench/evaluate_depth.py --queries 6980 --k 1000 --rerank 100 --depths 10,20,50,100

# Peak memory against corpus size: prepare, embedding, BM25 and dense retrieval, 100k and 1M.
bench-memory: $(STAMP)
	$(PY) bench/prepare_memory.py --passages 100000 1000000
	$(PY) bench/embed_memory.py --passages 100000 1000000
	$(PY) bench/bm25_memory.py --passages 100000 1000000
	$(PY) bench/topk.py --corpus 100000 --queries 1000 --k 100 --repeats 1
	$(PY) bench/topk.py --corpus 1000000 --queries 1000 --k 100 --repeats 1

clean:
	rm -rf runs .pytest_cache
