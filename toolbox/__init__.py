"""Host harness of the InverTune toolbox: hookspecs, plugin manager, runner, CLI, results.

Plugins talk to the host through :mod:`toolbox.hookspecs` and the interfaces in
:mod:`toolbox.api`. The whole public contract, all that plugins and adapters may import
(``PUBLIC_MODULES``, kept so by tests/test_layering.py): ``toolbox``, ``toolbox.api``,
``toolbox.hookspecs``, ``toolbox.progress``, ``toolbox.zeroshot``, ``toolbox.contrastive``, ``toolbox.null``,
``toolbox.precision`` and the small utilities ``toolbox.compat``, ``toolbox.atomic``, ``toolbox.cache``.
The rest (runner, plugins, evaluation, results, cli, compare, leaderboard, catalogue, builtins) is
the host's machinery.
"""

__version__ = "0.1.0"

PUBLIC_MODULES = (
    "toolbox",
    "toolbox.api",
    "toolbox.hookspecs",
    "toolbox.progress",
    "toolbox.zeroshot",
    "toolbox.contrastive",
    "toolbox.precision",
    "toolbox.compat",
    "toolbox.atomic",
    "toolbox.cache",
    "toolbox.lookup",
    "toolbox.null",
    "toolbox.intake",
    "toolbox.intake.files",
    "toolbox.intake.numbers",
    "toolbox.intake.images",
    "toolbox.intake.documents",
    "toolbox.primitives",
    "toolbox.primitives.triggers",
    "toolbox.primitives.perturbations",
    "toolbox.primitives.tensors",
    "toolbox.primitives.plots",
    "toolbox.zoo.outcome",
)

# Must run before anything imports torchvision (open_clip, torchmetrics do): see compat.py.
from .compat import import_torchvision as _import_torchvision  # noqa: E402

_import_torchvision()

_NOTEBOOK_API = ("run", "load", "RunResult", "Suspect")


def __getattr__(name: str):  # noqa: ANN202  (PEP 562: `import toolbox` stays light; toolbox.run loads the runner)
    """``toolbox.run``, ``toolbox.load``: the Python API of :mod:`toolbox.notebook`."""
    if name in _NOTEBOOK_API:
        from . import notebook

        return getattr(notebook, name)
    raise AttributeError(f"module 'toolbox' has no attribute {name!r}")
