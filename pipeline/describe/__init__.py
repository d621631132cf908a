"""The outputs that describe a scene or a bucket: quicklook, report, summary, STAC."""
