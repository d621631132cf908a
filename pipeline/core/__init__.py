"""Errors, coordinate systems and digests: what every stage shares."""
