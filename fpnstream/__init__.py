"""fpnstream: PyAV decode -> FPN Faster R-CNN (torchvision) on Ray actors -> Redis Streams."""

__version__ = "0.1.0"
SCHEMA_VERSION = "1"
