"""Workflows that chain several layers for one user task (the demo, a calibration acquisition)."""
