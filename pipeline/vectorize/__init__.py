"""The vectorize stage: from the building mask to delivered building polygons.

In data-path order: :mod:`~pipeline.vectorize.split` splits the mask into one region per
building; :mod:`~pipeline.vectorize.polygonize` turns a region raster into polygons, block
by block; :mod:`~pipeline.vectorize.buildings` takes them into metres once, filters them
(area, confidence, the false-positive scorer of :mod:`~pipeline.vectorize.scoring`) and
outlines them with :mod:`~pipeline.vectorize.postprocess` (canonical :mod:`~pipeline.vectorize.rings`,
squaring by :mod:`~pipeline.vectorize.regularize`, :mod:`~pipeline.vectorize.squaring` and
:mod:`~pipeline.vectorize.priors`, then :mod:`~pipeline.vectorize.overlaps`), and brings them
back to the scene CRS once. :mod:`~pipeline.vectorize.measure` holds the polygon measures
the evaluation shares.
"""
