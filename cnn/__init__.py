"""cnn: convolutional neural networks in JAX/Flax, measured on Fashion-MNIST and any image data set.

The names a notebook needs most (`__all__`), each from the module that defines it; import anything else from
its own module (`cnn.analysis.viz`, `cnn.studies.sweep`, ...):

    from cnn import TrainConfig, fit, load_dataset, restore_run
    splits = load_dataset(TrainConfig())                     # Fashion-MNIST, uint8, with `splits.spec`
    results = fit(TrainConfig(epochs=3, limit_train=5000), splits, "runs/notebook")

A name is imported when first used, so `import cnn` costs almost nothing and loads neither JAX nor
matplotlib, orbax or tensorflow-datasets. Importing `cnn` sets glibc's malloc to keep freed memory for XLA:CPU
(`cnn.engine.host_memory`) and turns JAX's persistent compilation cache on in a per-user folder
(`cnn.engine.compile_cache`); `CNN_MALLOC=default` and `CNN_COMPILE_CACHE=off` leave either alone.
"""

import importlib
import sys
import warnings

from cnn.engine.compile_cache import use_compile_cache
from cnn.engine.host_memory import keep_freed_memory, setting_error

keep_freed_memory()  # XLA:CPU's buffers reused between calls instead of page-faulted afresh
if setting_error() and sys.argv[:1] != ["-m"]:  # `python -m cnn` refuses it in one line instead
    warnings.warn(setting_error(), stacklevel=2)
use_compile_cache()  # a second identical command reads its programs back instead of compiling them

# Each public name and the module that defines it (a pair where the module calls it otherwise).
NAMES = {
    "CLASS_NAMES": ("cnn.data.spec", "FASHION_MNIST_CLASSES"),
    "DataSpec": "cnn.data.spec",
    "InputError": "cnn.errors",
    "MODELS": "cnn.models.registry",
    "Split": "cnn.data.spec",
    "Splits": "cnn.data.spec",
    "TrainConfig": "cnn.config",
    "build_model": "cnn.models.registry",
    "create_train_state": "cnn.engine.state",
    "data_mesh": "cnn.engine.devices",
    "evaluate": "cnn.engine.evaluation",
    "fit": "cnn.train",
    "fit_seeds": "cnn.train",
    "fit_together": "cnn.train",
    "format_summary": "cnn.models.summary",
    "initial_state": "cnn.engine.state",
    "layer_rows": "cnn.models.summary",
    "load_dataset": "cnn.data.load",
    "load_fashion_mnist": "cnn.data.fashion_mnist",
    "model_for": "cnn.engine.state",
    "model_summary": "cnn.models.registry",
    "plot_architecture": "cnn.analysis.plots",
    "plot_curves": "cnn.runs.curves",
    "predict": "cnn.engine.evaluation",
    "restore_run": "cnn.runs.results",
    "train_step": "cnn.engine.steps",
}
__all__ = sorted(NAMES)


def __getattr__(name: str):
    if name not in NAMES:
        raise AttributeError(f"module 'cnn' has no attribute {name!r}")
    module, attribute = NAMES[name] if isinstance(NAMES[name], tuple) else (NAMES[name], name)
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value  # the next use finds it directly
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
