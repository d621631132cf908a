"""The ``footprints`` command line: thin typer adapters over the packages."""
