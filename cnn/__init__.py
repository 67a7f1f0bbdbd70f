"""cnn: convolutional neural networks in JAX/Flax, measured on Fashion-MNIST and any image data set."""

from cnn.config import TrainConfig
from cnn.data import CLASS_NAMES, Split, Splits, load_fashion_mnist
from cnn.datasets import dataset_config, load_dataset
from cnn.host_memory import keep_freed_memory
from cnn.models import MODELS, build_model, model_summary
from cnn.parallel import data_mesh
from cnn.plots import plot_architecture, plot_curves
from cnn.rundir import restore_run
from cnn.steps import InputError, create_train_state, eval_step, evaluate, predict, train_step
from cnn.summary import format_summary, layer_rows
from cnn.train import fit, fit_seeds, fit_together

keep_freed_memory()  # XLA:CPU's buffers reused between calls instead of page-faulted afresh

__all__ = [
    "CLASS_NAMES",
    "InputError",
    "MODELS",
    "Split",
    "Splits",
    "TrainConfig",
    "build_model",
    "create_train_state",
    "dataset_config",
    "data_mesh",
    "eval_step",
    "evaluate",
    "fit",
    "fit_seeds",
    "fit_together",
    "format_summary",
    "layer_rows",
    "load_dataset",
    "load_fashion_mnist",
    "model_summary",
    "plot_architecture",
    "plot_curves",
    "predict",
    "restore_run",
    "train_step",
]
