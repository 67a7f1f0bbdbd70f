"""Many runs at once (`cnn.studies`): sweeps, experiments, tune, transfer, many machines."""
