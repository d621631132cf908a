"""Reading inputs, writing COGs and vectors, storage URLs and room to write."""
