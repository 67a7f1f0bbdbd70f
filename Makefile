# The two commands: `make train` (the main job) and `make test` (the whole suite). Both set everything up.
# Extra arguments: make train ARGS="--epochs 5"   make test PYTEST_ARGS="-k data"
.PHONY: setup train test lint bench

setup:
	@bash scripts/setup.sh

train: setup
	.venv/bin/python -m cnn train $(ARGS)

# Two workers: most tests are bound by XLA compilation, which runs on one core.
test: setup
	.venv/bin/python -m pytest -n 2 --dist worksteal $(PYTEST_ARGS)

lint: setup
	.venv/bin/ruff check cnn tests experiments scripts
	.venv/bin/ruff format --check cnn tests experiments scripts

# Throughput of the seed CNN on this machine beside PyTorch eager (same invocation), into benchmarks/.
PEER_DIR ?= ../shared/peers
bench: setup
	bash scripts/peer_setup.sh
	.venv/bin/python -m cnn bench --batch-sizes 32 128 --steps-per-call 1 10 --seeds 3 --out benchmarks/throughput-cpu.json \
	  --peer ".venv-peer/bin/python $(PEER_DIR)/torch_seed_cnn.py --json --batch-size {batch_size} --steps {steps}"
