#!/usr/bin/env bash
# The training recipe's figures on a lent GPU, in one call of the `device` tool (its machine has no registry:
# what the project needs beyond its image travels as wheels in .whl/, Fashion-MNIST in .fmnist/).
#
#   bash scripts/gpu_recipe.sh wheels               # here, once: .whl/ and .fmnist/ (both git-ignored)
#   bash scripts/gpu_recipe.sh run [VARIANT...]     # there (carry .whl and .fmnist); default: strong plain
#
# `run` trains the variants of experiments/recipe.py (3 seeds each, 60 epochs unless RECIPE_ARGS says
# otherwise) into $OUT/recipe, then the strong recipe on WRN-16-4 (one seed) when STRONG_WRN=1; every
# finished run's results.json and the tables come back under $OUT, logs in $OUT/*.log. A dry run here (the wheels are for the image's
# Python 3.12; this venv has the packages):
#   NO_WHEELS=1 PYTHON=.venv/bin/python OUT=/tmp/dry RECIPE_ARGS="--epochs 2 --limit-train 256" \
#       STRONG_WRN=1 WRN_ARGS="--epochs 2 --warmup-epochs 1 --limit-train 256" bash scripts/gpu_recipe.sh run strong
# The wheels themselves were checked the same way with PYTHON naming a Python 3.12 venv holding only what the
# GPU image is known to have (jax 0.11.2, flax 0.12.10, optax 0.2.8, numpy, matplotlib, pillow, h5py,
# scikit-image, tensorstore; no orbax): installed into .site by `run`, both parts finish (six, wrapt and chex
# are in the list for that venv; the image may have them already).
set -euo pipefail
cd "$(dirname "$0")/.."

WHEELS=(
    tensorflow-datasets==4.9.10 array_record==0.8.6 dm-tree==0.1.10 immutabledict==4.3.1 simple-parsing==0.1.9
    docstring_parser==0.18.0 tensorflow-metadata==1.21.0 googleapis-common-protos==1.76.0 termcolor==3.3.0
    toml==0.10.2 tensorboardX==2.6.5 orbax-checkpoint==0.12.8 nest-asyncio2==1.7.4 importlib_resources==7.1.0
    dm-pix==0.4.5 filelock==4.3.1 flatbuffers==25.12.19 tqdm==4.70.1 toolz==1.2.0 cloudpickle==3.1.3
    simplejson==4.3.0 humanize==4.17.0 six==1.17.0 wrapt==2.5.2 chex==0.1.92
)

case "${1:-}" in
wheels)
    mkdir -p .whl .fmnist
    platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
               --platform any)
    for wheel in "${WHEELS[@]}"; do
        python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
            "${platforms[@]}" -d .whl "$wheel"
    done
    python3 -m pip wheel -q --no-deps promise==2.3 -w .whl  # only an sdist exists
    source=${FASHION_MNIST_DIR:-/usr/share/datasets/fashion-mnist}
    cp "$source"/*-ubyte.gz .fmnist/
    du -sh .whl .fmnist
    ;;
run)
    shift
    python=${PYTHON:-python3}  # the image's Python there; PYTHON=.venv/bin/python for a dry run here
    : "${OUT:?run: OUT must name the folder whose files come back (the device tool sets it)}"
    [ -n "${NO_WHEELS:-}" ] || "$python" -m pip install -q --no-index --no-deps --target .site .whl/*.whl
    export PYTHONPATH=$PWD/.site:$PWD FASHION_MNIST_DIR=$PWD/.fmnist CNN_COMPILE_CACHE=/tmp/cnn-jax-cache
    (nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || lscpu | grep "Model name") \
        | tee "$OUT/machine.txt"
    git log -1 --format=%H >> "$OUT/machine.txt" 2>/dev/null || true
    variants=("$@")
    [ ${#variants[@]} -gt 0 ] || variants=(strong plain)
    # shellcheck disable=SC2086  # RECIPE_ARGS is a list of flags
    "$python" experiments/recipe.py --seeds 3 --variants "${variants[@]}" --out "$OUT/recipe" \
        --data-dir /tmp/cnn-tfds ${RECIPE_ARGS:-} 2>&1 | tee "$OUT/recipe.log" | grep -v "^Epoch"
    find "$OUT/recipe" -name "checkpoints" -type d -prune -exec rm -rf {} +  # weights stay there
    if [ "${STRONG_WRN:-0}" = 1 ]; then
        # shellcheck disable=SC2086
        "$python" -m cnn train --recipe strong_wrn --seed 0 --workdir "$OUT/strong_wrn-seed0" \
            --data-dir /tmp/cnn-tfds ${WRN_ARGS:-} 2>&1 | tee "$OUT/strong_wrn.log" | grep -v "^Epoch"
        rm -rf "$OUT/strong_wrn-seed0/checkpoints"
    fi
    cat "$OUT/recipe/results.md"
    ;;
*)
    echo "usage: bash scripts/gpu_recipe.sh wheels | run [VARIANT...]" >&2
    exit 2
    ;;
esac
