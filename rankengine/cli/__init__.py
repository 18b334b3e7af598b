"""The ``rankengine`` command line (entry point ``rankengine.cli:main``).

The top layer: ``main`` assembles the group, ``common`` holds what several commands share, and
each other module is one family of commands. Lower layers never import from here.
"""

from rankengine.cli.main import cli, main

__all__ = ["cli", "main"]
