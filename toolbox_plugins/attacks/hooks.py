"""The six attacks of the InverTune paper and the zoo's trigger families, a plugin of their own
(entry point ``attacks``)."""

from __future__ import annotations

from toolbox.hookspecs import hookimpl


@hookimpl
def register_attacks(register) -> None:
    from .badclip import BadCLIP
    from .badencoder import BadEncoder
    from .badnet import BadNet
    from .blend import Blend
    from .blended import Blended
    from .border import Border
    from .colour_filter import ColourFilter
    from .evasive import Evasive
    from .patch import Patch
    from .sig import SIG
    from .stripes import Stripes
    from .wanet import WaNet

    paper = (BadNet, Blended, SIG, WaNet, BadEncoder, BadCLIP)
    zoo_families = (Patch, Blend, Stripes, ColourFilter, Border)
    # registration order is listing order: the paper's six, the zoo's families, then the adaptive attack
    for cls in (*paper, *zoo_families, Evasive):
        register(cls)
