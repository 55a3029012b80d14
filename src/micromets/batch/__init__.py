"""Batch runs over many slides: content ids (`ident`), the results store (`store`), the resumable run with Dask
scale-out (`run`), triage thresholds (`triage`) and the worker speed-up measurement (`speedup`)."""
