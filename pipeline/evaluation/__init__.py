"""Scoring outputs against ground truth, and the validation split run."""
