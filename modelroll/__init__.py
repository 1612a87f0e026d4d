"""modelroll: build faster, smaller candidates of a production model and roll the best one out safely."""

__version__ = "0.1.0"
