"""The rankengine release: a leaf module, so any layer can name it without a cycle."""

__version__ = "0.1.0"
