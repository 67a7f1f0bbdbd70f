"""Runs: a run's folder and everything written in it. The folder, its config.json and lock (`folder`),
orbax checkpoints (`checkpoints`), early stopping and resuming (`resume`), the epoch-by-epoch record the
training loop keeps (`record`), the results of a finished run and `restore_run` (`results`), TensorBoard
events (`events`) and disk-space checks (`disk`).

May import: `cnn.errors`, `cnn.config`, `cnn.data.spec`, `cnn.models`, `cnn.engine`, `cnn.analysis.plots`
and each other."""
