"""Kubernetes objects for a pipeline run, generated as plain data (dicts).

The dask-kubernetes operator turns a ``DaskJob`` into a ``DaskCluster``
(scheduler + CPU workers, named after the job) plus a job-runner pod whose
environment holds ``DASK_SCHEDULER_ADDRESS``; the runner executes
``imaxt process`` which uploads the raw sample and runs the pipeline on that
cluster (for a landed section of a TissueCyte acquisition still running, with
``--sections`` so that it uploads and processes only those, :func:`process_args`).
An optional ``DaskWorkerGroup`` adds GPU workers to the same cluster:
the GPU image (``<image>-cuda`` unless given), one ``nvidia.com/gpu`` per worker
as a resource limit, the Dask resource ``GPU=1`` advertised to the scheduler,
and configurable node selector and tolerations. With GPU workers the run
configuration segments with cellpose on tasks that ask for ``GPU=1``
(:func:`gpu_segmentation`), and the group starts with 0 replicas: the job runner
scales it to the segmentation work when the segment step starts and back to 0
when it ends (:mod:`.gpu`, through :func:`gpu_env`). S3 credentials come from a
Secret (``envFrom``) and the run configuration from a ConfigMap mounted at
``/etc/imaxt``.

Credentials never go into the ConfigMap. Those given as storage options
(``key``, ``secret``, ``client_kwargs.aws_session_token``, anything
:func:`~imaxt_pipeline.io.provenance.is_credential_key` recognises) are taken out
of the configuration: the job container reads each from the Secret named by
``credentials_secret`` (``--credentials-secret``; one Secret key per option, named
by its dotted path) into an environment variable, and the configuration's
``storage_options_env`` tells the job to put it back. Without that Secret,
:func:`job_objects` refuses, saying how to create one.

Every pod is compliant with the Pod Security Standards' ``restricted`` profile:
non-root UID :data:`RUN_AS_UID` (the image's ``USER``), ``RuntimeDefault``
seccomp, no privilege escalation, all capabilities dropped.

Nothing here talks to a cluster, so everything is testable offline;
``imaxt submit --backend kubernetes --dry-run`` prints these objects as YAML.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from ..errors import ConfigError
from ..io.provenance import credential_paths

DASK_API = "kubernetes.dask.org/v1"
CONFIG_DIR = "/etc/imaxt"
GPU_RESOURCE = "nvidia.com/gpu"
GPU_TAINT_KEY = GPU_RESOURCE
GPU_IMAGE_SUFFIX = "-cuda"
#: UID and GID of every container: the ``imaxt`` user of the Dockerfile.
RUN_AS_UID = 1000


def _default_gpu_tolerations() -> list[dict[str, Any]]:
    return [{"key": GPU_TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"}]


@dataclass(frozen=True)
class KubeSettings:
    """Cluster-side settings of a run (the chart's ``values.yaml`` mirrors them).

    ``gpu_image`` defaults to :func:`default_gpu_image` of ``image``;
    ``gpu_node_selector`` and ``gpu_tolerations`` place the GPU worker group
    (the default tolerates the usual ``nvidia.com/gpu`` taint).
    """

    image: str = "ghcr.io/imaxt/imaxt-pipeline:0.1.0"
    gpu_image: str | None = None
    namespace: str = "imaxt"
    service_account: str | None = None
    s3_secret: str = "imaxt-s3"
    credentials_secret: str | None = None
    endpoint_url: str | None = None
    workers: int = 2
    worker_resources: dict[str, Any] = field(
        default_factory=lambda: {"requests": {"cpu": "1", "memory": "4Gi"}, "limits": {"cpu": "2", "memory": "8Gi"}}
    )
    worker_threads: int = 1
    gpu_workers: int = 0
    #: Service account of the job runner when there are GPU workers: it scales their group (deploy/rbac.yaml).
    job_service_account: str = "imaxt-job"
    gpu_resources: dict[str, Any] = field(
        default_factory=lambda: {
            "requests": {"cpu": "2", "memory": "16Gi"},
            "limits": {"cpu": "4", "memory": "24Gi", GPU_RESOURCE: "1"},
        }
    )
    gpu_node_selector: dict[str, str] = field(default_factory=dict)
    gpu_tolerations: list[dict[str, Any]] = field(default_factory=_default_gpu_tolerations)
    scheduler_resources: dict[str, Any] = field(
        default_factory=lambda: {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"cpu": "1", "memory": "2Gi"}}
    )
    job_resources: dict[str, Any] = field(
        default_factory=lambda: {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"cpu": "1", "memory": "2Gi"}}
    )
    image_pull_policy: str = "IfNotPresent"


def k8s_name(text: str, *, max_len: int = 40) -> str:
    """A DNS-1123 label derived from ``text`` (lower case, ``[a-z0-9-]``, short enough
    that the operator's ``-scheduler`` / ``-runner`` / worker suffixes still fit)."""
    name = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-") or "sample"
    if len(name) > max_len or name != text:
        digest = hashlib.sha1(text.encode()).hexdigest()[:6]
        name = f"{name[: max_len - 7].rstrip('-')}-{digest}"
    return name


def default_gpu_image(image: str) -> str:
    """The GPU (CUDA) build of ``image``: its tag plus ``-cuda`` (the Dockerfile's ``VARIANT=cuda``).

    Parameters
    ----------
    image : str
        CPU image reference, ``[registry[:port]/]repository[:tag]``; no tag means ``latest``.

    Returns
    -------
    str
        E.g. ``ghcr.io/imaxt/imaxt-pipeline:0.1.0-cuda``.

    Raises
    ------
    ValueError
        For a digest reference (``...@sha256:...``): no tag can be derived from it,
        so ``gpu_image`` must be given.
    """
    if "@" in image:
        raise ValueError(f"cannot derive a GPU image from digest reference {image!r}: set gpu_image (--gpu-image)")
    repository, sep, tag = image.rpartition(":")
    if not sep or "/" in tag:  # no tag: the colon (if any) belonged to a registry port
        repository, tag = image, "latest"
    return f"{repository}:{tag}{GPU_IMAGE_SUFFIX}"


def gpu_image(settings: KubeSettings) -> str:
    """The image of the GPU worker group: ``settings.gpu_image`` or :func:`default_gpu_image`."""
    return settings.gpu_image or default_gpu_image(settings.image)


def pod_security_context() -> dict[str, Any]:
    """Pod-level ``securityContext`` (Pod Security Standards, ``restricted`` profile)."""
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS_UID,
        "runAsGroup": RUN_AS_UID,
        "fsGroup": RUN_AS_UID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context() -> dict[str, Any]:
    """Container-level ``securityContext`` (``restricted`` on its own, without the pod's)."""
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS_UID,
        "runAsGroup": RUN_AS_UID,
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _env(settings: KubeSettings) -> list[dict[str, Any]]:
    env = [{"name": "OMP_NUM_THREADS", "value": str(settings.worker_threads)}]
    if settings.endpoint_url:
        env.append({"name": "AWS_ENDPOINT_URL", "value": settings.endpoint_url})
    return env


def _env_from(settings: KubeSettings) -> list[dict[str, Any]]:
    return [{"secretRef": {"name": settings.s3_secret}}]


def _pod_spec(settings: KubeSettings, container: dict[str, Any], **extra: Any) -> dict[str, Any]:
    container = {**container, "securityContext": container_security_context()}
    spec: dict[str, Any] = {"securityContext": pod_security_context(), "containers": [container], **extra}
    if settings.service_account:
        spec["serviceAccountName"] = settings.service_account
    return spec


def _gpu_resources(settings: KubeSettings) -> tuple[dict[str, Any], str]:
    """GPU worker resources with the ``nvidia.com/gpu`` limit always present, and the GPU count."""
    resources = {key: dict(value) for key, value in settings.gpu_resources.items()}
    limits = resources.setdefault("limits", {})
    count = str(limits.get(GPU_RESOURCE) or resources.get("requests", {}).get(GPU_RESOURCE) or "1")
    limits[GPU_RESOURCE] = count
    if GPU_RESOURCE in resources.get("requests", {}):
        resources["requests"][GPU_RESOURCE] = count  # extended resources: request == limit
    return resources, count


def worker_spec(settings: KubeSettings, *, gpu: bool = False) -> dict[str, Any]:
    """The ``spec`` of a worker group: ``{"replicas": n, "spec": PodSpec}``.

    GPU workers run :func:`gpu_image`, have the ``nvidia.com/gpu`` limit (1 unless the
    resources say otherwise), advertise as many units of the Dask resource ``GPU``
    (``--resources GPU=1``) and carry the GPU node selector and tolerations.
    """
    args = [
        "dask",
        "worker",
        "--name",
        "$(DASK_WORKER_NAME)",
        "--nthreads",
        str(settings.worker_threads),
        "--dashboard",
        "--dashboard-address",
        "8788",
    ]
    resources = settings.worker_resources
    if gpu:
        resources, count = _gpu_resources(settings)
        args += ["--resources", f"GPU={count}"]
    container = {
        "name": "worker",
        "image": gpu_image(settings) if gpu else settings.image,
        "imagePullPolicy": settings.image_pull_policy,
        "args": args,
        "env": _env(settings),
        "envFrom": _env_from(settings),
        "resources": resources,
        "ports": [{"name": "http-dashboard", "containerPort": 8788, "protocol": "TCP"}],
    }
    extra: dict[str, Any] = {}
    if gpu:
        if settings.gpu_tolerations:
            extra["tolerations"] = [dict(t) for t in settings.gpu_tolerations]
        if settings.gpu_node_selector:
            extra["nodeSelector"] = dict(settings.gpu_node_selector)
    # The GPU group starts empty: the job runner scales it up for the segment step only (service.gpu).
    return {"replicas": 0 if gpu else settings.workers, "spec": _pod_spec(settings, container, **extra)}


def scheduler_spec(settings: KubeSettings, cluster_name: str) -> dict[str, Any]:
    """The ``spec.scheduler`` of DaskCluster ``cluster_name``: scheduler pod plus its Service."""
    container = {
        "name": "scheduler",
        "image": settings.image,
        "imagePullPolicy": settings.image_pull_policy,
        "args": ["dask", "scheduler", "--host", "0.0.0.0"],
        "resources": settings.scheduler_resources,
        "ports": [
            {"name": "tcp-comm", "containerPort": 8786, "protocol": "TCP"},
            {"name": "http-dashboard", "containerPort": 8787, "protocol": "TCP"},
        ],
        "readinessProbe": {
            "httpGet": {"port": "http-dashboard", "path": "/health"},
            "initialDelaySeconds": 5,
            "periodSeconds": 10,
        },
    }
    service = {
        "type": "ClusterIP",
        "selector": {"dask.org/cluster-name": cluster_name, "dask.org/component": "scheduler"},
        "ports": [
            {"name": "tcp-comm", "protocol": "TCP", "port": 8786, "targetPort": "tcp-comm"},
            {"name": "http-dashboard", "protocol": "TCP", "port": 8787, "targetPort": "http-dashboard"},
        ],
    }
    return {"spec": _pod_spec(settings, container), "service": service}


def _labels(sample: str | None = None) -> dict[str, str]:
    labels = {"app.kubernetes.io/name": "imaxt-pipeline", "app.kubernetes.io/part-of": "imaxt"}
    if sample:
        labels["imaxt.org/sample"] = k8s_name(sample, max_len=63)
    return labels


def config_map(name: str, config_yaml: str, *, namespace: str, sample: str | None = None) -> dict[str, Any]:
    """ConfigMap holding the run configuration as ``config.yaml``."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace, "labels": _labels(sample)},
        "data": {"config.yaml": config_yaml},
    }


def secret_template(name: str = "imaxt-s3", *, namespace: str = "imaxt") -> dict[str, Any]:
    """Secret with the S3 credentials read by every pod (fill in the values)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {"name": name, "namespace": namespace, "labels": _labels()},
        "stringData": {"AWS_ACCESS_KEY_ID": "CHANGE-ME", "AWS_SECRET_ACCESS_KEY": "CHANGE-ME"},
    }


def dask_cluster_spec(settings: KubeSettings, cluster_name: str) -> dict[str, Any]:
    """``{"worker": ..., "scheduler": ...}``: the spec of a DaskCluster."""
    return {"worker": worker_spec(settings), "scheduler": scheduler_spec(settings, cluster_name)}


def dask_cluster(name: str, settings: KubeSettings) -> dict[str, Any]:
    """A standalone DaskCluster (what ``KubeCluster(name=...)`` creates) for notebooks."""
    return {
        "apiVersion": DASK_API,
        "kind": "DaskCluster",
        "metadata": {"name": name, "namespace": settings.namespace, "labels": _labels()},
        "spec": dask_cluster_spec(settings, name),
    }


def gpu_worker_group(cluster_name: str, settings: KubeSettings) -> dict[str, Any]:
    """A DaskWorkerGroup of GPU workers attached to ``cluster_name``."""
    return {
        "apiVersion": DASK_API,
        "kind": "DaskWorkerGroup",
        "metadata": {"name": f"{cluster_name}-gpu", "namespace": settings.namespace, "labels": _labels()},
        "spec": {"cluster": cluster_name, "worker": worker_spec(settings, gpu=True)},
    }


def dask_job(
    name: str, settings: KubeSettings, *, args: list[str], config_map_name: str, sample: str | None = None
) -> dict[str, Any]:
    """A DaskJob whose runner executes ``args`` against its own DaskCluster."""
    container = {
        "name": "job",
        "image": settings.image,
        "imagePullPolicy": settings.image_pull_policy,
        "args": args,
        "env": _env(settings),
        "envFrom": _env_from(settings),
        "resources": settings.job_resources,
        "volumeMounts": [{"name": "config", "mountPath": CONFIG_DIR, "readOnly": True}],
    }
    job_pod = _pod_spec(
        settings, container, restartPolicy="Never", volumes=[{"name": "config", "configMap": {"name": config_map_name}}]
    )
    return {
        "apiVersion": DASK_API,
        "kind": "DaskJob",
        "metadata": {"name": name, "namespace": settings.namespace, "labels": _labels(sample)},
        "spec": {"job": {"spec": job_pod}, "cluster": {"spec": dask_cluster_spec(settings, name)}},
    }


def process_args(
    raw_url: str,
    output_url: str,
    raw_store_url: str,
    *,
    sections: Sequence[int] | None = None,
    acquisition_ended: bool = False,
) -> list[str]:
    """Command line of the job runner: upload + run on ``$DASK_SCHEDULER_ADDRESS``.

    ``sections`` (a TissueCyte acquisition still running: the section numbers landed so far)
    becomes ``--sections 1,2,3``, as the local launcher passes them to
    :func:`~.launcher.process_sample`: only those are uploaded, only the new ones processed;
    ``acquisition_ended`` adds ``--acquisition-ended``.
    """
    args = [
        "imaxt",
        "process",
        raw_url,
        "--out",
        output_url,
        "--raw-store",
        raw_store_url,
        "--config",
        f"{CONFIG_DIR}/config.yaml",
    ]
    if sections is not None:
        numbers = sorted({int(n) for n in sections})
        if not numbers or numbers[0] < 1:
            raise ValueError(f"sections must be section numbers >= 1, got {sections!r}")
        args += ["--sections", ",".join(str(n) for n in numbers)]
    if acquisition_ended:
        if sections is None:
            raise ValueError("acquisition_ended needs the sections the acquisition has")
        args.append("--acquisition-ended")
    return args


#: Prefix of the environment variables that carry credentials from ``credentials_secret``.
CREDENTIAL_ENV_PREFIX = "IMAXT_CREDENTIAL_"


def credential_env_name(dotted: str) -> str:
    """Environment variable of storage option ``dotted``: ``client_kwargs.aws_session_token`` ->
    ``IMAXT_CREDENTIAL_CLIENT_KWARGS__AWS_SESSION_TOKEN``."""
    return CREDENTIAL_ENV_PREFIX + re.sub(r"[^A-Z0-9_]", "_", dotted.upper().replace(".", "__"))


def _secret_command(keys: list[str], namespace: str, name: str = "imaxt-credentials") -> str:
    literals = " ".join(f"--from-literal={k}=..." for k in keys)
    return f"kubectl create secret generic {name} -n {namespace} {literals}"


def move_credentials(config_yaml: str, settings: KubeSettings) -> tuple[str, list[dict[str, Any]]]:
    """Take the credentials out of a run configuration; return it and the env entries that restore them.

    Each credential in ``storage_options`` is removed and replaced by an entry of
    ``storage_options_env`` naming an environment variable, which the returned entries fill
    from ``settings.credentials_secret`` (``secretKeyRef``, key = the option's dotted path).

    Raises
    ------
    ConfigError
        If there are credentials and no ``credentials_secret``: the message says how to create
        the Secret, and never shows a value.
    """
    config = yaml.safe_load(config_yaml) or {}
    options = config.get("storage_options") or {}
    found = sorted(".".join(path) for path in credential_paths(options))
    if not found:
        return config_yaml, []
    if not settings.credentials_secret:
        raise ConfigError(
            f"storage options hold credentials ({', '.join(found)}) that a ConfigMap would show in plain text: "
            f"put them in a Secret ({_secret_command(found, settings.namespace)}) "
            "and pass --credentials-secret imaxt-credentials (or use the AWS variables of --s3-secret)"
        )
    for dotted in found:
        node = options
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node[key]
        del node[leaf]
    for key in [k for k, v in options.items() if v == {}]:  # e.g. client_kwargs emptied
        del options[key]
    env_map = {**(config.get("storage_options_env") or {}), **{d: credential_env_name(d) for d in found}}
    config["storage_options"] = options
    config["storage_options_env"] = env_map
    env = [
        {
            "name": credential_env_name(d),
            "valueFrom": {"secretKeyRef": {"name": settings.credentials_secret, "key": d}},
        }
        for d in found
    ]
    return yaml.safe_dump(config, sort_keys=False), env


def job_objects(
    sample: str,
    settings: KubeSettings,
    *,
    raw_url: str,
    output_url: str,
    raw_store_url: str,
    config_yaml: str,
    sections: Sequence[int] | None = None,
    acquisition_ended: bool = False,
) -> list[dict[str, Any]]:
    """Everything to ``kubectl apply`` for one sample: ConfigMap, DaskJob, GPU group.

    With ``sections`` (a landed section of an acquisition still running, :func:`process_args`)
    the job processes only those sections, and its objects are named after the landing
    (``imaxt-<sample>-s<last section>``, ``-end`` when the acquisition ended), so that the next
    landing's job never collides with the previous one while Kubernetes is still deleting it.
    """
    name = k8s_name(f"imaxt-{sample}")
    args = process_args(raw_url, output_url, raw_store_url, sections=sections, acquisition_ended=acquisition_ended)
    if sections is not None:
        name = k8s_name(f"imaxt-{sample}-s{max(sections)}{'-end' if acquisition_ended else ''}")
    cm = f"{name}-config"
    config_yaml, credential_env = move_credentials(config_yaml, settings)
    if settings.gpu_workers > 0:
        config_yaml = gpu_segmentation(config_yaml)
        credential_env += gpu_env(f"{name}-gpu", settings)
    job = dask_job(name, settings, args=args, config_map_name=cm, sample=sample)
    job["spec"]["job"]["spec"]["containers"][0]["env"] += credential_env
    if settings.gpu_workers > 0:
        job["spec"]["job"]["spec"]["serviceAccountName"] = settings.job_service_account
    objects = [config_map(cm, config_yaml, namespace=settings.namespace, sample=sample), job]
    if settings.gpu_workers > 0:
        # The operator names the job's DaskCluster after the job.
        objects.append(gpu_worker_group(name, settings))
    return objects


def gpu_segmentation(config_yaml: str) -> str:
    """The run configuration with segmentation on the GPU workers: cellpose, tasks asking ``GPU=1``.

    Raises
    ------
    ConfigError
        If the configuration chose the watershed backend, which would leave the GPUs idle.
    """
    config = yaml.safe_load(config_yaml) or {}
    steps = config.setdefault("steps", {}) or {}
    config["steps"] = steps
    segment = steps.setdefault("segment", {}) or {}
    steps["segment"] = segment
    if segment.get("backend", "cellpose") != "cellpose":
        raise ConfigError(
            f"--gpu-workers runs segmentation with cellpose on the GPUs, but steps.segment.backend is "
            f"{segment['backend']!r}: drop --gpu-workers or the backend setting"
        )
    segment.update(backend="cellpose", gpu_resource=True)
    return yaml.safe_dump(config, sort_keys=False)


def gpu_env(group: str, settings: KubeSettings) -> list[dict[str, Any]]:
    """Environment of the job runner that lets it scale its GPU group (:mod:`.gpu`)."""
    from .gpu import GROUP_ENV, NAMESPACE_ENV, WORKERS_ENV

    return [
        {"name": GROUP_ENV, "value": group},
        {"name": WORKERS_ENV, "value": str(settings.gpu_workers)},
        {"name": NAMESPACE_ENV, "value": settings.namespace},
    ]


class _Dumper(yaml.SafeDumper):
    pass


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def to_yaml(objects: list[dict[str, Any]]) -> str:
    """Multi-document YAML, ready for ``kubectl apply -f -`` (multi-line strings as blocks)."""
    return yaml.dump_all(objects, Dumper=_Dumper, sort_keys=False, default_flow_style=False)
