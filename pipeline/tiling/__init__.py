"""Tile grids and the stitcher: how a scene is cut into tiles and put back together."""
