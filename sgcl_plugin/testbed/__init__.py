"""The evidence testbed: what measures SGCL, apart from what SGCL is.

- :mod:`sgcl_plugin.testbed.scenes`: composed scenes (colourised Fashion-MNIST objects on real textures, with
  exact boxes and masks) and Fashion-MNIST loading.
- :mod:`sgcl_plugin.testbed.metrics`: the same-object pair rate of training pairs against true masks.
- :mod:`sgcl_plugin.testbed.evaluation`: frozen-feature probes (weighted kNN, linear, dense).

The core package never imports from here; the testbed imports the core.
"""
