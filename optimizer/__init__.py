"""optimizer: build INT8 and pruned candidates of a baseline and measure every variant the same way."""
