"""The command line (`cnn.cli`): misuse and faults as a user meets them."""
