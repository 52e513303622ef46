"""Primitives that several plugins share and none owns: trigger painting, UAP perturbation
families, tensor helpers, image grids. Plain torch; part of the public contract."""
