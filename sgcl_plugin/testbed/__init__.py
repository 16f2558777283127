"""The evidence testbed: what measures SGCL, apart from what SGCL is.

- :mod:`sgcl_plugin.testbed.scenes`: composed scenes (colourised Fashion-MNIST objects on real textures, with
  exact boxes and masks) and Fashion-MNIST loading.
- :mod:`sgcl_plugin.testbed.metrics`: the same-object pair rate of training pairs against true masks.
- :mod:`sgcl_plugin.testbed.evaluation`: frozen-feature probes (weighted kNN, linear, dense).
- :mod:`sgcl_plugin.testbed.eval_sets`: the trainer's evaluation sets and :func:`evaluate_backbone
  <sgcl_plugin.testbed.eval_sets.evaluate_backbone>`, which probes a frozen backbone on them.
- :mod:`sgcl_plugin.testbed.ground_truth`: the scenes' true boxes as regions (``--regions gt``) and their masks.

The core package never imports from here; the testbed imports the core.
"""

from typing import List

__all__: List[str] = []  # a namespace: import the submodules
