# The two commands: `make train` (the main job) and `make test` (the whole suite). Both set everything up.
# Extra arguments: make train ARGS="--epochs 5"   make test PYTEST_ARGS="-k data"
.PHONY: setup train test lint

setup:
	@bash scripts/setup.sh

train: setup
	.venv/bin/python -m cnn train $(ARGS)

test: setup
	.venv/bin/python -m pytest $(PYTEST_ARGS)

lint: setup
	.venv/bin/ruff check cnn tests experiments scripts
	.venv/bin/ruff format --check cnn tests experiments scripts
