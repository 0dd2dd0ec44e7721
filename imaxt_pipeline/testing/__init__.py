"""Test support shipped with the package: synthetic raw samples, grids, an S3 endpoint, schema checks."""
