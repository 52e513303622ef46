"""The procedural image-caption world and the tiny CLIP trained on it (the embedded default)."""
