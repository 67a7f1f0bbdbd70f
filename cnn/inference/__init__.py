"""Inference: a finished run used outside training. Classifying image files (`predict`) and exporting the
network as a `jax.export` program or ONNX (`export`).

May import: `cnn.data`, `cnn.models`, `cnn.engine`, `cnn.runs`."""
