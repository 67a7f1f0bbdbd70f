"""A run's folder (`cnn.runs`): crash safety, resuming, runs written by earlier code."""
