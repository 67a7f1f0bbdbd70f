"""Looking at trained networks (`cnn.analysis`)."""
