#!/usr/bin/env bash
# One-time set-up, safe to re-run: a virtual environment in .venv with the package, its dev, photos, onnx and cluster
# extras, PostgreSQL's server (for the tests of sweeps across machines),
# and the Fashion-MNIST IDX files (Debian package dataset-fashion-mnist where apt is available).
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi
stamp=".venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -f "$stamp" ]; then
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet -e '.[dev,photos,onnx,cluster,docs]'
    rm -f .venv/.installed-*
    touch "$stamp"
fi

# A PostgreSQL server for the tests of sweeps and studies across machines (tests/studies/test_cluster.py)
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
    pg_sudo=""
    [ "$(id -u)" = 0 ] || pg_sudo="sudo -n"
    { $pg_sudo apt-get update -qq && $pg_sudo apt-get install -y -qq postgresql >/dev/null; } ||
        echo "PostgreSQL could not be installed: the tests that need its server are skipped."
fi

system_dir=/usr/share/datasets/fashion-mnist
if [ -n "${FASHION_MNIST_DIR:-}" ] || [ -f "$system_dir/train-images-idx3-ubyte.gz" ]; then
    exit 0
fi
sudo=""
[ "$(id -u)" = 0 ] || sudo="sudo -n"
if command -v apt-get >/dev/null 2>&1 && { [ -z "$sudo" ] || sudo -n true 2>/dev/null; }; then
    echo "Installing Fashion-MNIST (Debian package dataset-fashion-mnist)..."
    $sudo apt-get update -qq && $sudo apt-get install -y -qq dataset-fashion-mnist >/dev/null
else
    echo "Fashion-MNIST is not installed and apt-get is not usable here: the first training run" \
         "downloads it from the official URLs (or set FASHION_MNIST_DIR to a folder with the .gz files)."
fi
