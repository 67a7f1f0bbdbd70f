"""Analysis: looking at trained networks. Pictures of filters, feature maps and mistakes (`viz`), plots of
runs and sweeps (`plots`), explanations (`explain`: Grad-CAM, input gradients, SmoothGrad), scores beyond
accuracy (`scores`: per-class F1, calibration), the `python -m cnn evaluate` report (`report`) and
receptive fields (`receptive_field`).

May import: anything below it (`cnn.data`, `cnn.models`, `cnn.engine`, `cnn.runs`) and each other;
`plots` imports nothing of `cnn` (runs draw their curves with it)."""
