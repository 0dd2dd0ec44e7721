"""Typed configuration of a pipeline run.

One :class:`RunConfig` describes a run: where the raw store is, where the
output goes, how to reach storage and the Dask cluster, and the parameters of
every step (the models live in :mod:`.steps.params`, which imports no
step module). It loads from YAML, and CLI options override it; unknown keys are
errors so that a typo never silently falls back to a default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import ConfigError
from .steps.params import StepParams, StepsConfig


class ClusterConfig(BaseModel):
    """How to reach Dask: an existing scheduler, or a LocalCluster of this size."""

    model_config = ConfigDict(extra="forbid")

    scheduler: str | None = Field(default=None, description="Scheduler address; None starts a LocalCluster")
    n_workers: int = Field(default=2, ge=1)
    threads_per_worker: int = Field(default=1, ge=1)
    memory_limit: str = "4GiB"
    processes: bool = True


class RunConfig(BaseModel):
    """Everything one ``imaxt run`` needs."""

    model_config = ConfigDict(extra="forbid")

    input_url: str = Field(description="Raw Zarr store written by `imaxt upload`")
    output_url: str = Field(description="Output OME-Zarr store")
    storage_options: dict[str, Any] = Field(default_factory=dict, description="fsspec options, e.g. endpoint_url")
    slices: list[int] | None = Field(default=None, description="Process only these slices (live processing)")
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    steps: StepsConfig = Field(default_factory=StepsConfig)

    def step(self, name: str) -> StepParams:
        """The parameters of step ``name``."""
        params: StepParams = getattr(self.steps, name)
        return params


def load_config(path: str | Path | None = None, **overrides: Any) -> RunConfig:
    """Build a :class:`RunConfig` from an optional YAML file plus overrides.

    ``overrides`` use dotted keys for nested fields, e.g.
    ``{"cluster.scheduler": "tcp://host:8786", "steps.mosaic.levels": 3}``;
    ``None`` values are ignored so that unset CLI options keep the file's value.

    Raises
    ------
    ConfigError
        If the file cannot be parsed or a key is unknown or invalid.
    """
    data: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file is missing") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: invalid YAML ({exc})".replace("\n", " ")) from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: top level must be a mapping, got {type(loaded).__name__}")
        data = loaded or {}
    for dotted, value in overrides.items():
        if value is None:
            continue
        node = data
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        source = f"{path}: " if path else ""
        raise ConfigError(f"{source}{where}: {err['msg']}") from None
