"""cnn: convolutional neural networks in JAX/Flax, measured on Fashion-MNIST and any image data set.

The names a notebook needs most, from the modules that define them (import anything else from its module):

    from cnn import TrainConfig, fit, load_dataset, restore_run
    splits = load_dataset(TrainConfig())                     # Fashion-MNIST, uint8, with `splits.spec`
    results = fit(TrainConfig(epochs=3, limit_train=5000), splits, "runs/notebook")

Importing `cnn` sets glibc's malloc to keep freed memory for XLA:CPU (`cnn.host_memory`) and turns JAX's
persistent compilation cache on in a per-user folder (`cnn.compile_cache`); `CNN_MALLOC=default` and
`CNN_COMPILE_CACHE=off` leave either alone.
"""

import sys
import warnings

from cnn.compile_cache import use_compile_cache
from cnn.config import TrainConfig
from cnn.data import FASHION_MNIST_CLASSES as CLASS_NAMES
from cnn.data import DataSpec, Split, Splits
from cnn.datasets import load_dataset
from cnn.datasets.fashion_mnist import load_fashion_mnist
from cnn.evaluation import InputError, evaluate, predict
from cnn.host_memory import keep_freed_memory, setting_error
from cnn.models import MODELS, build_model, model_for, model_summary
from cnn.parallel import data_mesh
from cnn.plots import plot_architecture, plot_curves
from cnn.results import restore_run
from cnn.state import create_train_state, initial_state
from cnn.steps import train_step
from cnn.summary import format_summary, layer_rows
from cnn.train import fit, fit_seeds, fit_together

keep_freed_memory()  # XLA:CPU's buffers reused between calls instead of page-faulted afresh
if setting_error() and sys.argv[:1] != ["-m"]:  # `python -m cnn` refuses it in one line instead
    warnings.warn(setting_error(), stacklevel=2)
use_compile_cache()  # a second identical command reads its programs back instead of compiling them

__all__ = [
    "CLASS_NAMES",
    "DataSpec",
    "InputError",
    "MODELS",
    "Split",
    "Splits",
    "TrainConfig",
    "build_model",
    "create_train_state",
    "data_mesh",
    "evaluate",
    "fit",
    "fit_seeds",
    "fit_together",
    "format_summary",
    "initial_state",
    "layer_rows",
    "load_dataset",
    "load_fashion_mnist",
    "model_for",
    "model_summary",
    "plot_architecture",
    "plot_curves",
    "predict",
    "restore_run",
    "train_step",
]
