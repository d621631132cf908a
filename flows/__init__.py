"""Prefect flows: thin orchestration over :mod:`pipeline`."""
