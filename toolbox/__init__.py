"""Host harness of the InverTune toolbox: hookspecs, plugin manager, runner, CLI, results.

Plugins talk to the host through :mod:`toolbox.hookspecs` and the interfaces in
:mod:`toolbox.api`; nothing else in this package is a plugin contract.
"""

__version__ = "0.1.0"

# Must run before anything imports torchvision (open_clip, torchmetrics do): see compat.py.
from .compat import import_torchvision as _import_torchvision  # noqa: E402

_import_torchvision()
