"""From the building mask to polygons: split, polygonize, score, regularize."""
