"""Pure numpy/scipy kernels: numpy in, numpy out, no I/O, no dask."""
