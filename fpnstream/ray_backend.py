"""Detector actors on a Ray cluster: a thin wrapper around the plain `Detector`."""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future
from typing import Sequence

import ray
from ray.exceptions import RayActorError, RayTaskError

from fpnstream.config import ModelConfig, RayConfig
from fpnstream.errors import FpnstreamError, ModelError
from fpnstream.frames import BatchResult, Frame
from fpnstream.model import Detector

log = logging.getLogger(__name__)


class DetectorActor:
    """Holds one model on its device. Loading happens in `load`, so errors reach the driver
    as our own exception types instead of an opaque actor death."""

    def __init__(self, model_cfg: ModelConfig) -> None:
        self._cfg = model_cfg
        self._detector: Detector | None = None

    def load(self) -> dict[str, str]:
        self._detector = Detector.from_config(self._cfg)
        return {"model": self._detector.model_name, "device": str(self._detector.device), "node": ray.get_runtime_context().get_node_id()}

    def detect(self, frames: Sequence[Frame]) -> BatchResult:
        if self._detector is None:  # a restarted actor comes back without its model
            self.load()
        assert self._detector is not None
        return self._detector.detect(frames)


def connect(cfg: RayConfig) -> None:
    """Join the cluster at `cfg.address`, or start a private local Ray."""
    if ray.is_initialized():
        return
    kwargs = dict(include_dashboard=False, logging_level=logging.WARNING, configure_logging=True, log_to_driver=True)
    try:
        if cfg.address:
            ray.init(address=cfg.address, **kwargs)
        else:
            # "local" always starts a private instance, even if `ray start` runs on this machine.
            ray.init(address="local", num_cpus=cfg.num_cpus, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as e:
        where = cfg.address or "a local instance"
        raise FpnstreamError(f"cannot start or join Ray ({where}): {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None


class RayBackend:
    """A pool of detector actors; each batch goes to the actor with the fewest batches in flight."""

    def __init__(self, actors: list, infos: list[dict[str, str]], max_inflight_per_actor: int) -> None:
        self._actors = actors
        self._inflight = [0] * len(actors)
        self._lock = threading.Lock()  # completions arrive on Ray's threads
        self.model_name = infos[0]["model"]
        self.device = infos[0]["device"]
        self.max_inflight = max_inflight_per_actor * len(actors)

    @classmethod
    def from_config(cls, model_cfg: ModelConfig, ray_cfg: RayConfig) -> RayBackend:
        connect(ray_cfg)
        gpus = ray.cluster_resources().get("GPU", 0.0)
        use_gpu = model_cfg.device == "cuda" or (model_cfg.device == "auto" and gpus > 0)
        if model_cfg.device == "cuda" and gpus == 0:
            raise ModelError("device 'cuda' requested but the Ray cluster has no GPUs")
        num_actors = ray_cfg.num_actors or (max(1, int(gpus // ray_cfg.num_gpus_per_actor)) if use_gpu else 1)
        actor_cls = ray.remote(DetectorActor).options(
            num_gpus=ray_cfg.num_gpus_per_actor if use_gpu else 0,
            num_cpus=ray_cfg.num_cpus_per_actor,
            # Ray restarts a dead actor; detect() is pure, so retrying a batch cannot duplicate output.
            max_restarts=-1,
            max_task_retries=3,
            # Placement across nodes is Ray's job: SPREAD puts actors on different nodes where it can.
            scheduling_strategy="SPREAD",
        )
        actors = [actor_cls.remote(model_cfg) for _ in range(num_actors)]
        try:
            infos = ray.get([a.load.remote() for a in actors])
        except RayTaskError as e:
            cause = getattr(e, "cause", None)
            if isinstance(cause, FpnstreamError):
                raise cause from None
            raise ModelError(f"detector actor failed to load the model: {type(cause or e).__name__}: {cause or e}") from None
        except RayActorError as e:
            raise ModelError(f"detector actor died while loading the model: {str(e).splitlines()[0]}") from None
        log.info("%d detector actor(s) ready: %s on %s", num_actors, infos[0]["model"], infos[0]["device"])
        return cls(actors, infos, ray_cfg.max_inflight_per_actor)

    def submit(self, frames: Sequence[Frame]) -> Future[BatchResult]:
        with self._lock:
            k = min(range(len(self._actors)), key=self._inflight.__getitem__)
            self._inflight[k] += 1
        fut = self._actors[k].detect.remote(list(frames)).future()

        def _done(_: Future, k: int = k) -> None:
            with self._lock:
                self._inflight[k] -= 1

        fut.add_done_callback(_done)
        return fut

    def close(self) -> None:
        for a in self._actors:
            ray.kill(a)
        self._actors = []
