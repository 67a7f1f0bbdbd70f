"""Data: what a data set is and how it enters a run. `spec` (the data description `DataSpec` and the splits,
uint8 NHWC images and int32 labels), the sets (`fashion_mnist`, `image_folder`, `lfw_faces`), their tfds
preparation (`prepared`), the train/validation/test division (`splits`), the load-time transforms
(`transforms`) and `load.load_dataset`, which resolves a name or a folder.

May import: `cnn.errors`, `cnn.config` and each other (`spec` at the bottom, `load` at the top)."""
