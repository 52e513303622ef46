"""The built-in detectors, one module each (see :mod:`invertune_plugin.cascade`), registered through
the ``register_detectors`` hook in :mod:`invertune_plugin.hooks` like a third party's."""

from .collapse import CollapseSearch
from .inversion import MaskInversion
from .linf import LinfSearch
from .patch import RefinedPatchSearch
from .stripes import StripeSearch

DETECTORS = (MaskInversion, RefinedPatchSearch, StripeSearch, LinfSearch, CollapseSearch)
