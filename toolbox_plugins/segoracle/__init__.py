"""SegOracle, a defense: a plugin of its own (entry point ``segoracle``), blockable alone."""
