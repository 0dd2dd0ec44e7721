"""Service layer: CLI, watcher, launchers (LocalCluster, Dask, Kubernetes)."""
