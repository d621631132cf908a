"""Running a scene: the job, planning, dispatch to Dask, restart, the output folder and the record."""
