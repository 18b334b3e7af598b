"""rankengine's built-in plugins.

Each module is one plugin, registered through the ``rankengine`` entry-point group like any
third-party package, and importing only rankengine's public API (``from rankengine import ...``).
"""
