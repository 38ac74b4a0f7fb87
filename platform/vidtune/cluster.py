"""Connecting to Ray: an existing cluster when the job names one, else a local Ray for this process."""

from __future__ import annotations

import os

import ray

from vidtune.config import RayConfig


def local_cpus() -> int:
    # Data stages and training workers each hold logical CPUs; with a budget equal to the physical cores
    # a TorchTrainer plus a Ray Data stage deadlock (ray 2.60 on 2 cores), so oversubscribe 2x, at least 4.
    return max(4, 2 * (os.cpu_count() or 1))


_started_locally = False


def ensure_ray(cfg: RayConfig) -> None:
    """Start or join Ray once per process; later stages of the same run reuse the connection."""
    global _started_locally
    if ray.is_initialized():
        return
    if cfg.address:
        ray.init(address=cfg.address, log_to_driver=True)
    else:
        ray.init(num_cpus=cfg.num_cpus or local_cpus(), include_dashboard=False, log_to_driver=True)
        _started_locally = True


def cpu_workers(cpus_per_worker: float) -> int:
    """How many CPU-bound workers (decoders, renderers) to run at once.

    On a cluster: its CPUs. On the local Ray vidtune started: the physical cores, because the logical
    CPUs are oversubscribed on purpose (``local_cpus``) and four decoders on two cores run slower than two.
    """
    cpus = ray.cluster_resources().get("CPU", 1.0)
    if _started_locally:
        cpus = min(cpus, os.cpu_count() or 1)
    return max(1, int(cpus // cpus_per_worker))
