"""The atlas build on Ray: one actor per worker loads the model once (one torch thread), Ray's
ActorPool hands the chunks out, and each finished chunk's tables come back to the driver, the
only writer of shards and manifest (so no shared file system is needed and resume works as
in-process). A chunk's numbers do not depend on which worker ran it, nor on the thread count.

Ray is an optional extra (`pip install -e .[ray]`); nothing else in moyu imports it.
"""
from __future__ import annotations

import os
import socket
from contextlib import contextmanager
from typing import Callable, Iterator

from ..errors import MoyuError
from . import REPRODUCIBLE_MKL, collect
from .corpus import Chunk

# passed to every worker: the same cache (weights, calibration, router) and offline mode
_ENV_KEYS = ("MOYU_CACHE", "MOYU_ROUTER_DIR", "HF_HUB_OFFLINE", "TRANSFORMERS_NO_ADVISORY_WARNINGS")


class ChunkWorker:
    """A Ray actor: the model, loaded once, and the prepared methods."""

    def __init__(self, model: str, fingerprint: str, methods: list[str], top_k: int, method_every: int):
        from .. import models
        models.setup_compute(1)
        self.lm = models.load(model)
        if str(self.lm.fingerprint) != fingerprint:
            raise MoyuError(f"worker's {model} has fingerprint {str(self.lm.fingerprint)[:12]}, the driver's "
                            f"{fingerprint[:12]}: give every node the same weights")
        self.methods, _ = collect.ready_methods(self.lm, methods)
        self.top_k, self.method_every = top_k, method_every

    def run(self, chunk: Chunk) -> dict:
        return collect.compute_chunk(self.lm, self.methods, chunk, self.top_k, self.method_every)


def worker_env() -> dict[str, str]:
    """The environment of every Ray worker: this process's cache and offline settings, one torch
    thread, reproducible MKL."""
    env = {k: os.environ[k] for k in _ENV_KEYS if k in os.environ}
    from ..models import CACHE_DIR
    env.setdefault("MOYU_CACHE", str(CACHE_DIR))
    env.setdefault("HF_HUB_OFFLINE", "1")
    return {**env, "MOYU_THREADS": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
            "MKL_CBWR": REPRODUCIBLE_MKL}


def _reachable(address: str) -> None:
    """A plain host:port address must answer a TCP connection within 5 s (Ray itself retries an
    unreachable one for minutes); ray://, auto and other forms are left to Ray."""
    host, sep, port = address.rpartition(":")
    if not sep or "://" in address or not port.isdigit():
        return
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=5).close()
    except OSError as e:
        raise MoyuError(f"could not start or join Ray at {address!r}: nothing answers there "
                        f"({e.strerror or e})") from None


@contextmanager
def ray_session(address: str, workers: int | None) -> Iterator[int]:
    """Start (address "local": `workers` CPUs, default 2) or join a Ray cluster for the block;
    yields the number of workers to use (joined: default the cluster's CPU count)."""
    try:
        import ray
    except ImportError:
        raise MoyuError("--ray needs Ray: pip install -e '.[ray]'") from None
    os.environ.setdefault("RAY_DISABLE_USAGE_STATS", "1")
    if ray.is_initialized():
        raise MoyuError("Ray is already initialised in this process")
    runtime_env = {"env_vars": worker_env()}
    try:
        if address == "local":
            workers = workers or 2
            ray.init(address="local", num_cpus=workers, include_dashboard=False, log_to_driver=False,
                     configure_logging=False, runtime_env=runtime_env)
        else:
            _reachable(address)
            ray.init(address=address, log_to_driver=False, configure_logging=False, runtime_env=runtime_env)
            workers = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise MoyuError(f"could not start or join Ray at {address!r}: {str(e).splitlines()[0]}") from None
    try:
        yield workers
    finally:
        ray.shutdown()


def run_on_ray(lm, methods: list[str], top_k: int, method_every: int, chunks: list[Chunk], workers: int,
               landed: Callable[[dict], None]) -> None:
    """Run `chunks` on the Ray cluster of `ray_session` with `workers` actors and hand each result
    to `landed` as it arrives."""
    import ray
    from ray.util import ActorPool

    if not chunks:
        return
    actor = ray.remote(num_cpus=1)(ChunkWorker)
    pool = ActorPool([actor.remote(lm.name, str(lm.fingerprint), methods, top_k, method_every)
                      for _ in range(min(workers, len(chunks)))])
    try:
        for result in pool.map_unordered(lambda a, c: a.run.remote(c), chunks):
            landed(result)
    except ray.exceptions.RayError as e:
        cause = getattr(e, "cause", None) or e
        raise MoyuError(f"a Ray worker failed: {str(cause).strip().splitlines()[-1]}") from None
