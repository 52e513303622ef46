"""DBOM, a dataset defense: a plugin of its own (entry point ``dbom``), blockable alone."""
