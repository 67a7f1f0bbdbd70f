"""Models: the networks and what they are built from. Keras-semantics `layers`, the convolution from first
principles (`conv`), the sources' networks (`sources`), the experiments' configurable `convnet`,
`wide_resnet`, the famous ImageNet networks (`applications/`), cutting a network for transfer learning
(`cutting`), summaries (`summary`) and the `registry` that builds any of them by name for a data
description.

May import: `cnn.errors`, `cnn.data.spec` and each other; never the training config (a model knows its own
fields, not how it is trained)."""
