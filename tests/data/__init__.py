"""The data sets: Fashion-MNIST's tfds builder, image folders, the LFW photos (`cnn.data`)."""
