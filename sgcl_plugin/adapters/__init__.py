"""Adapters for SSL frameworks: ``sgcl_plugin.adapters.lightly``, ``.solo`` and ``.lightning``.

Each adapter imports its framework lazily: importing ``sgcl_plugin`` never needs lightly,
solo-learn or Lightning.
"""

from typing import List

__all__: List[str] = []  # a namespace: import the submodules
