"""The Ray a command trains on: a new local one, or the cluster ``--address`` names.

Ray waits minutes for a cluster that does not answer, and a Train run whose workers need more
CPUs than a fixed cluster has waits for them forever; both are refused here, in seconds, naming
the address or the spec keys.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable

import ray
from ray._private.services import canonicalize_bootstrap_address

from boxinst.platform.console import QUIET_WORKERS, RAY_DRIVER_LOG_LEVEL, quiet_ray_driver
from boxinst.platform.preflight import PreflightError
from boxinst.platform.spec import TrainSpec
from boxinst.platform.training.ray_train import WORKER_ENV

#: Seconds to wait for a cluster's address to accept a connection.
CONNECT_TIMEOUT = 10.0


class ClusterUnreachable(ConnectionError):
    """Nothing answers at the Ray address a command was given."""


def check_reachable(address: str) -> None:
    """Raise :class:`ClusterUnreachable` unless something accepts connections at ``address``
    (``host:port``, ``ray://host:port``, or ``auto``: the cluster this machine last started)."""
    try:
        if address.startswith("ray://"):
            target = address.removeprefix("ray://")
        else:
            target = canonicalize_bootstrap_address(address)
    except (ValueError, ConnectionError) as error:
        raise ClusterUnreachable(f"Ray address {address!r}: {error}") from None
    if target is None:  # "auto" with no cluster recorded: Ray says so itself, at once
        return
    host, _, port = target.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT).close()
    except (OSError, ValueError) as error:
        raise ClusterUnreachable(
            f"no Ray cluster answers at {address} ({error}); check the address and that the "
            "cluster is up (`ray status` on its head), or leave --address out to train on a "
            "new local Ray"
        ) from None


def check_fits(runs: Iterable[TrainSpec]) -> None:
    """Raise :class:`PreflightError` for a run whose workers need more CPUs or GPUs than the
    Ray this command started has (a local Ray does not grow)."""
    total = ray.cluster_resources()
    for spec in runs:
        res = spec.resources
        needs = {"CPU": res.num_workers * res.cpus_per_worker}
        if res.use_gpu:
            needs["GPU"] = res.num_workers
        for kind, amount in needs.items():
            if amount > total.get(kind, 0):
                raise PreflightError(
                    f"resources: {spec.name} needs {amount:g} {kind}s "
                    f"(resources.num_workers={res.num_workers}, "
                    f"cpus_per_worker={res.cpus_per_worker:g}, use_gpu={res.use_gpu}) but "
                    f"the local Ray has {total.get(kind, 0):g}; lower them, or give --address "
                    "a cluster"
                )


def start_ray(address: str | None, runs: Iterable[TrainSpec], verbose: bool = False) -> None:
    """Connect to ``address``, or, without one, to the cluster of the Ray job this command
    runs in (``RAY_ADDRESS``), else start a new local Ray: never the one a ``ray start`` or a
    killed run left recorded on the machine (Ray joins that by default, and hangs when it has
    gone). ``runs`` must fit a local Ray. Unless ``verbose``, Ray's driver does not log its
    start-up, and a local Ray's workers are quieted (:func:`~boxinst.platform.console.
    quiet_ray_worker`; a submitted job's are by its runtime environment)."""
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or "local"
    if address != "local":
        check_reachable(address)
    for name, value in WORKER_ENV.items():  # a local Ray's workers inherit it
        os.environ.setdefault(name, value)
    if not verbose:
        quiet_ray_driver()
    ray.init(
        address=address,
        include_dashboard=False,
        logging_level=RAY_DRIVER_LOG_LEVEL[verbose],
        runtime_env=QUIET_WORKERS if address == "local" and not verbose else None,
    )
    if address == "local":
        check_fits(runs)
