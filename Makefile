# The two commands: `make train` (the main job) and `make test` (the whole suite). Both set everything up.
# Extra arguments: make train ARGS="--epochs 5"   make test PYTEST_ARGS="-k data"
.PHONY: setup train test test-fast lint bench experiments

setup:
	@bash scripts/setup.sh

train: setup
	.venv/bin/python -m cnn train $(ARGS)

# Two workers: most tests are bound by XLA compilation, which runs on one core. The 20 slowest tests are
# printed at the end, so that time creep shows in every log.
test: setup
	.venv/bin/python -m pytest -n 2 --dist worksteal --durations=20 $(PYTEST_ARGS)

# The fast tier: every test not marked `slow` (no process started, no real data set, no notebook).
test-fast: setup
	.venv/bin/python -m pytest -n 2 --dist worksteal -m "not slow" --durations=10 $(PYTEST_ARGS)

lint: setup
	.venv/bin/ruff check cnn tests experiments scripts
	.venv/bin/ruff format --check cnn tests experiments scripts

# Throughput of the seed CNN on this machine beside PyTorch eager and torch.compile (same invocation), into
# benchmarks/. torch.compile needs a C++ compiler: without one only the eager peer runs.
PEER_DIR ?= ../shared/peers
PEER = .venv-peer/bin/python $(PEER_DIR)/torch_seed_cnn.py --json --batch-size {batch_size} --steps {steps}
COMPILE_PEER = $(if $(shell command -v c++ 2>/dev/null),--peer "compile=$(PEER) --compile",)
bench: setup
	bash scripts/peer_setup.sh
	.venv/bin/python -m cnn bench --batch-sizes 32 128 256 --steps-per-call 1 10 --seeds 3 \
	  --out benchmarks/throughput-cpu.json --peer "eager=$(PEER)" $(COMPILE_PEER)

# The padding, stride, pooling, MLP and shift-robustness experiments in one process (shared data and
# compiled programs): make experiments ARGS="--epochs 1 --seeds 2 --limit-train 512"
experiments: setup
	.venv/bin/python -m cnn experiments $(ARGS)

# The documentation site (mkdocs.yml) into site/, the notebooks run at their small default settings so their
# figures are on the pages (about as long as the notebooks' tests); the generated reference pages are checked
# first (python scripts/docs_pages.py rewrites them). The suite builds it too, strictly, without running them.
.PHONY: docs docs-serve
docs: setup
	.venv/bin/python scripts/docs_pages.py --check
	.venv/bin/mkdocs build --strict --site-dir site

docs-serve: setup
	.venv/bin/mkdocs serve
