"""A finished run used outside training (`cnn.inference`)."""
