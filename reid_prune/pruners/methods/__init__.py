"""The pruning methods, one short file each. Every module here is imported, and so registered, on import.

Adding a method is adding a file: it declares a :class:`~reid_prune.pruners.registry.Method`
(criterion, schedule, default allocation, typed options) and calls ``register``.
"""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
