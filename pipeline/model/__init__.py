"""DeepLabV3, its encoders, checkpoints, runtimes and the segmenter that runs it on tiles."""
