"""Studies: many runs at once. Sweeps over a grid of configs (`sweep`), hyper-parameter search with Optuna
(`tune`), the scripts of `experiments/` run in one process (`scripts`), transfer learning (`transfer`),
throughput and fixed-cost benchmarks (`bench`), and how the runs of a sweep train fastest together
(`grouping`).

May import: `cnn.train` and everything below it; each other."""
