"""FLARE, a dataset defense: a plugin of its own (entry point ``flare``), blockable alone."""
