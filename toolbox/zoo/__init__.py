"""Populations of suspect models: build, evaluate, score."""
