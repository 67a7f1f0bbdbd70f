"""What runs on the device (`cnn.engine`): steps, runs trained together, devices, costs."""
