"""Typed configuration of a pipeline run.

One :class:`RunConfig` describes a run: where the raw store is, where the
output goes, how to reach storage and the Dask cluster, and the parameters of
every step (the models live in :mod:`.steps.params`, which imports no
step module). It loads from YAML, and CLI options override it; unknown keys are
errors so that a typo never silently falls back to a default.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import ConfigError
from .steps.params import StepParams, StepsConfig

#: Seconds to wait for an existing Dask scheduler before giving up (``cluster.connect_timeout_s``).
DEFAULT_CONNECT_TIMEOUT_S = 10.0


def _check_url(value: str, info: Any) -> str:
    # Imported here: io.storage pulls in fsspec, and loading the configuration must stay cheap.
    from .io.storage import check_url

    try:
        return check_url(value, info.field_name)
    except ConfigError as exc:
        raise ValueError(str(exc).split(": ", 1)[-1]) from None


class ClusterConfig(BaseModel):
    """How to reach Dask: an existing scheduler, or a LocalCluster of this size."""

    model_config = ConfigDict(extra="forbid")

    scheduler: str | None = Field(default=None, description="Scheduler address; None starts a LocalCluster")
    connect_timeout_s: float = Field(
        default=DEFAULT_CONNECT_TIMEOUT_S, gt=0, description="seconds to wait for the scheduler before giving up"
    )
    n_workers: int = Field(default=2, ge=1)
    threads_per_worker: int = Field(default=1, ge=1)
    memory_limit: str | int = Field(default="4GiB", description="per worker: bytes, '4GiB', '500 MB' or 'auto'")
    processes: bool = True

    @field_validator("scheduler")
    @classmethod
    def _scheduler_address(cls, value: str | None) -> str | None:
        if value is not None and (not value.strip() or any(c.isspace() for c in value)):
            raise ValueError(f"not a scheduler address: {value!r} (e.g. tcp://host:8786)")
        return value

    @field_validator("memory_limit")
    @classmethod
    def _byte_size(cls, value: str | int) -> str | int:
        """A size dask understands (``dask.utils.parse_bytes``), positive; or ``auto``."""
        if isinstance(value, str) and value.strip().lower() == "auto":
            return "auto"
        from dask.utils import parse_bytes

        try:
            nbytes = parse_bytes(value)
        except (ValueError, TypeError):
            raise ValueError(f"not a byte size: {value!r} (e.g. '4GiB', '500 MB', 4000000000 or 'auto')") from None
        if nbytes <= 0:
            raise ValueError(f"must be a positive byte size, got {value!r}")
        return value


class RunConfig(BaseModel):
    """Everything one ``imaxt run`` needs."""

    model_config = ConfigDict(extra="forbid")

    input_url: str = Field(description="Raw Zarr store written by `imaxt upload`")
    output_url: str = Field(description="Output OME-Zarr store")
    storage_options: dict[str, Any] = Field(default_factory=dict, description="fsspec options, e.g. endpoint_url")
    storage_options_env: dict[str, str] = Field(
        default_factory=dict,
        description="storage options read from environment variables when loaded, {dotted option: variable}, "
        "e.g. {secret: IMAXT_CREDENTIAL_SECRET} (how Kubernetes Secrets reach a job)",
    )
    slices: list[Annotated[int, Field(ge=0)]] | None = Field(
        default=None, description="Process only these slices (live processing)"
    )
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    steps: StepsConfig = Field(default_factory=StepsConfig)

    _urls = field_validator("input_url", "output_url")(_check_url)

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
            loaded = yaml.safe_load(Path(path).read_bytes().decode("utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file is missing") from None
        except IsADirectoryError:
            raise ConfigError(f"{path}: config file is a folder") from None
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read the config file ({exc.strerror or exc})") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path}: config file is not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
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
    source = f"{path}: " if path else ""
    try:
        config = RunConfig.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        msg = str(err["msg"]).removeprefix("Value error, ")
        raise ConfigError(f"{source}{where}: {msg}".replace("\n", " ")) from None
    if config.storage_options_env:
        config = config.model_copy(update={"storage_options": storage_options_from_env(config, source=source)})
    return config


def storage_options_from_env(config: RunConfig, *, source: str = "", environ: Any = None) -> dict[str, Any]:
    """``config.storage_options`` with the options of ``storage_options_env`` read from the environment.

    ``{"client_kwargs.aws_session_token": "AWS_SESSION_TOKEN"}`` sets
    ``storage_options["client_kwargs"]["aws_session_token"]`` from ``$AWS_SESSION_TOKEN``.

    Raises
    ------
    ConfigError
        If a variable is not set (the message names it, never a value).
    """
    environ = os.environ if environ is None else environ
    options: dict[str, Any] = {k: (dict(v) if isinstance(v, dict) else v) for k, v in config.storage_options.items()}
    for dotted, variable in config.storage_options_env.items():
        if variable not in environ:
            raise ConfigError(f"{source}storage_options_env.{dotted}: environment variable {variable} is not set")
        node = options
        *parents, leaf = dotted.split(".")
        for key in parents:
            child = node.get(key)
            node[key] = child = dict(child) if isinstance(child, dict) else {}
            node = child
        node[leaf] = environ[variable]
    return options
