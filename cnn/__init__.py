"""cnn: convolutional neural networks in JAX/Flax, measured on Fashion-MNIST."""

from cnn.config import TrainConfig
from cnn.data import CLASS_NAMES, Split, Splits, load_fashion_mnist
from cnn.models import MODELS, build_model
from cnn.parallel import data_mesh
from cnn.plots import plot_architecture, plot_curves
from cnn.summary import format_summary, layer_rows, model_summary
from cnn.train import (
    InputError,
    create_train_state,
    eval_step,
    evaluate,
    fit,
    predict,
    restore_run,
    train_step,
)

__all__ = [
    "CLASS_NAMES",
    "InputError",
    "MODELS",
    "Split",
    "Splits",
    "TrainConfig",
    "build_model",
    "create_train_state",
    "data_mesh",
    "eval_step",
    "evaluate",
    "fit",
    "format_summary",
    "layer_rows",
    "load_fashion_mnist",
    "model_summary",
    "plot_architecture",
    "plot_curves",
    "predict",
    "restore_run",
    "train_step",
]
