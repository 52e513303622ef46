"""The built-in detectors, one module each (see :mod:`invertune_plugin.cascade`). A module here is
imported when the cascade looks its detectors up: adding one is a new module and a cascade entry."""
