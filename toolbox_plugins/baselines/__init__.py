"""Baseline defenses from the paper's Table 1: FT, CleanCLIP, CleanerCLIP, PAR."""

from .defenses import BASELINES, FT, PAR, CleanCLIP, CleanerCLIP

__all__ = ["BASELINES", "FT", "CleanCLIP", "CleanerCLIP", "PAR"]
