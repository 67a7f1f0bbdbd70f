"""Famous ImageNet networks in Flax, layer for layer and name for name as `keras.applications` builds them:
one module per network, their shared parts (`common`, `names`), Keras' weight files (`weights`) and
`networks`, which builds, cuts and loads them by name.

May import: `cnn.models.layers`, `cnn.models.summary`, `cnn.models.cutting`, `cnn.runs.checkpoints`."""
