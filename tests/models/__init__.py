"""The networks and their layers (`cnn.models`), against Keras where Keras has them."""
