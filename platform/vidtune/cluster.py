"""Connecting to Ray: an existing cluster when the job names one (or ``ray job submit`` set
``RAY_ADDRESS``), else a local Ray for this process; and where data tasks may run."""

from __future__ import annotations

import logging
import os
from typing import Any

import ray

from vidtune.config import RayConfig

log = logging.getLogger(__name__)

# A local Ray advertises this much of each `ray.data_resources` key: a job file written for a cluster's
# CPU nodes runs unchanged on one machine.
LOCAL_DATA_RESOURCE = 1000.0


def local_cpus() -> int:
    # Data stages and training workers each hold logical CPUs; with a budget equal to the physical cores
    # a TorchTrainer plus a Ray Data stage deadlock (ray 2.60 on 2 cores), so oversubscribe 2x, at least 4.
    return max(4, 2 * (os.cpu_count() or 1))


_started_locally = False
_data_resources: dict[str, float] = {}


def ray_address(cfg: RayConfig) -> str | None:
    """The cluster to join: the job file's ``ray.address``, else ``RAY_ADDRESS`` (inside a Ray job)."""
    return cfg.address or os.environ.get("RAY_ADDRESS") or None


def ensure_ray(cfg: RayConfig) -> None:
    """Start or join Ray once per process; later stages of the same run reuse the connection."""
    global _started_locally, _data_resources
    _data_resources = dict(cfg.data_resources)  # this job's rule, even on a Ray started by someone else
    if ray.is_initialized():
        return
    address = ray_address(cfg)
    if address:
        # A cluster's resources are its nodes' business: num_cpus or resources here would be an error.
        ray.init(address=address, log_to_driver=True)
        missing = [k for k in cfg.data_resources if k not in ray.cluster_resources()]
        if missing:
            log.warning(
                "no node of this cluster has the resource(s) %s that ray.data_resources asks data tasks "
                "for: they wait until such a node joins (an autoscaler starts one; see docs/cluster.md)",
                missing,
            )
    else:
        # "local": a new Ray for this process, even when /tmp/ray/ray_current_cluster names a cluster
        # started (or left behind) by `ray start` on this machine.
        ray.init(
            address="local",
            num_cpus=cfg.num_cpus or local_cpus(),
            resources={k: LOCAL_DATA_RESOURCE for k in cfg.data_resources} or None,
            include_dashboard=False,
            log_to_driver=True,
        )
        _started_locally = True


def data_task_args() -> dict[str, Any]:
    """Extra ``map_batches`` arguments for a CPU data task (decode, render, embed, encode) of the job
    that last called :func:`ensure_ray` in this process.

    With ``ray.data_resources`` set, the tasks need a custom resource only CPU nodes advertise, so on a
    mixed cluster the GPU nodes only train and serve. Ray already avoids GPU nodes for CPU-only tasks
    when it can; the resource makes it a rule.
    """
    return {"resources": dict(_data_resources)} if _data_resources else {}


def cpu_workers(cpus_per_worker: float) -> int:
    """How many CPU-bound workers (decoders, renderers) to run at once.

    On a cluster: its CPUs. On the local Ray vidtune started: the physical cores, because the logical
    CPUs are oversubscribed on purpose (``local_cpus``) and four decoders on two cores run slower than two.
    """
    cpus = ray.cluster_resources().get("CPU", 1.0)
    if _started_locally:
        cpus = min(cpus, os.cpu_count() or 1)
    return max(1, int(cpus // cpus_per_worker))
