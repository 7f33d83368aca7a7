"""Stream workers as Ray actors, and the connection to Ray. The only module that imports Ray.

Ray does placement (SPREAD over nodes, GPUs per actor) and restarts dead actors; the
coordinator (fpnstream.runtime.coordinator) decides which worker feeds which stream.
"""

from __future__ import annotations

import logging
import signal
import threading

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

from fpnstream.config.settings import AppConfig
from fpnstream.core.errors import FpnstreamError, ModelError, StreamUnwritable
from fpnstream.core.redact import redact_text
from fpnstream.core.reports import Assignment, Resume, WorkerInfo, WorkerStatus
from fpnstream.runtime.pool import ClaimFailed, ClaimRefused, WorkerGone
from fpnstream.runtime.worker import StreamWorker
from fpnstream.sources import SourceSpec

log = logging.getLogger(__name__)


def connect(cfg: AppConfig) -> None:
    """Join the cluster at `ray.address`, or start a private local Ray."""
    if ray.is_initialized():
        return
    kwargs = dict(include_dashboard=False, logging_level=logging.WARNING, configure_logging=True, log_to_driver=True)
    # Ray's core installs its own SIGTERM handler (log and die); ours must win so a SIGTERM
    # drains in-flight frames instead of losing them.
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        if cfg.ray.address:
            ray.init(address=cfg.ray.address, **kwargs)
        else:
            # "local" always starts a private instance, even if `ray start` runs on this machine.
            ray.init(address="local", num_cpus=cfg.ray.num_cpus, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as e:
        where = cfg.ray.address or "a local instance"
        raise FpnstreamError(f"cannot start or join Ray ({where}): {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    if threading.current_thread() is threading.main_thread():
        for sig, handler in previous.items():
            if callable(handler):
                signal.signal(sig, handler)


def room_for(bundle: dict[str, float]) -> bool:
    """Whether one node has `bundle` free. An actor lives on one node, so what is free summed
    over the nodes (0.4 CPU here and 0.4 there) is no room for a 0.6-CPU worker: a worker
    started on that sum was never placed, and as a worker still joining it held the pool's
    growth back until a node with room came."""
    try:
        # Ray has no public call for this (`available_resources` sums over nodes); its state
        # API answers per node. If a Ray release drops it, the sum is the fallback.
        from ray._private.state import available_resources_per_node

        nodes = list(available_resources_per_node().values())
    except (ImportError, AttributeError, TypeError):
        nodes = [ray.available_resources()]
    wanted = {k: v for k, v in bundle.items() if v > 0}
    return any(all(free.get(k, 0.0) >= v for k, v in wanted.items()) for free in nodes)


def warm(cfg: AppConfig) -> None:
    """Connect, and run one empty task per CPU, so Ray's worker processes have started
    (and imported Ray) before something is timed: a benchmark's first Ray run otherwise
    shares the cores with that start-up (measured: 0.87 of in-process, 0.95-1.01 once warm)."""
    connect(cfg)

    @ray.remote(num_cpus=1)
    def _nothing() -> None:
        return None

    ray.get([_nothing.remote() for _ in range(max(1, int(ray.cluster_resources().get("CPU", 1))))])


def is_initialized() -> bool:
    return ray.is_initialized()


def shutdown() -> None:
    ray.shutdown()


def _cause(e: RayTaskError) -> BaseException:
    return getattr(e, "cause", None) or e


class RayPool:
    def __init__(self, cfg: AppConfig, redis_url: str) -> None:
        self._cfg = cfg
        self._redis_url = redis_url
        self._actors: list = []
        self._loading: dict[int, object] = {}  # ObjectRefs of load() calls in progress
        self._requested = False  # an autoscaler request is standing (withdrawn at close)

    def _sized(self) -> tuple[int, object]:
        """How many actors, and the actor class with its resources."""
        cfg, rc = self._cfg, self._cfg.ray
        gpus = ray.cluster_resources().get("GPU", 0.0)
        use_gpu = cfg.model.device == "cuda" or (cfg.model.device == "auto" and gpus > 0)
        if cfg.model.device == "cuda" and gpus == 0:
            raise ModelError("device 'cuda' requested but the Ray cluster has no GPUs")
        n = rc.num_actors or (max(1, int(gpus // rc.num_gpus_per_actor)) if use_gpu else 1)
        num_cpus = rc.num_cpus_per_actor
        if not use_gpu and n == 1 and rc.address is None and "num_cpus_per_actor" not in rc.model_fields_set:
            # The private local Ray of a laptop run: its one CPU worker may use every core.
            num_cpus = max(1.0, float(int(ray.cluster_resources().get("CPU", 1.0))))
        if not use_gpu and cfg.model.torch_threads is None:
            # Ray starts a CPU actor with OMP_NUM_THREADS=1 whatever it reserved; use what it reserved.
            self._cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"torch_threads": max(1, int(num_cpus))})})
        self._bundle = {"GPU": rc.num_gpus_per_actor} if use_gpu else {}
        self._bundle["CPU"] = num_cpus
        actor_cls = ray.remote(StreamWorker).options(
            num_gpus=rc.num_gpus_per_actor if use_gpu else 0,
            num_cpus=num_cpus,
            max_restarts=-1,  # Ray brings a dead worker back; the coordinator reloads it
            max_concurrency=4,  # status polls must get through while a drain is running
            scheduling_strategy="SPREAD",
        )
        return n, actor_cls

    def start(self) -> list[WorkerInfo]:
        n, actor_cls = self._sized()
        self._actor_cls = actor_cls
        self._actors = [actor_cls.remote(self._cfg, self._redis_url) for _ in range(n)]
        try:
            return ray.get([a.load.remote() for a in self._actors])
        except RayTaskError as e:
            cause = _cause(e)
            if isinstance(cause, FpnstreamError):
                raise cause from None
            raise ModelError(f"stream worker failed to start: {type(cause).__name__}: {cause}") from None
        except RayActorError as e:
            raise ModelError(f"stream worker died while starting: {str(e).splitlines()[0]}") from None

    def poll(self, timeout_s: float) -> list[WorkerStatus | WorkerGone | None]:
        refs = [a.status.remote() for a in self._actors]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
        ready_set = set(ready)
        out: list[WorkerStatus | WorkerGone | None] = []
        for ref in refs:
            if ref not in ready_set:
                out.append(None)
                continue
            try:
                out.append(ray.get(ref))
            except (RayActorError, RayTaskError) as e:
                out.append(WorkerGone(type(e).__name__))
        return out

    def assign(self, index: int, spec: SourceSpec, owner: str, restart: bool, known: Resume | None = None) -> Assignment:
        ref = self._actors[index].assign.remote(spec, owner, restart, known)
        try:
            return ray.get(ref, timeout=30)
        except GetTimeoutError:
            # The stream goes to another worker now. A claim still queued on this one must
            # never run: it would fence the new owner, whose reports then read "moved".
            # (Ray drops a queued actor task; one already running is not interrupted.)
            try:
                ray.cancel(ref)
            except Exception as e:
                log.warning("could not cancel a timed-out claim of %s: %s", spec.stream_id, redact_text(str(e)))
            raise WorkerGone("GetTimeoutError") from None
        except RayActorError as e:
            raise WorkerGone(type(e).__name__) from None
        except RayTaskError as e:
            cause = _cause(e)
            if isinstance(cause, StreamUnwritable):
                raise ClaimRefused(str(cause)) from None
            raise ClaimFailed(redact_text(str(cause))) from None

    def unassign(self, index: int, stream_id: str) -> None:
        try:
            ray.get(self._actors[index].unassign.remote(stream_id), timeout=10)
        except (RayActorError, GetTimeoutError) as e:
            raise WorkerGone(type(e).__name__) from None

    def reload(self, index: int) -> WorkerInfo | None:
        ref = self._loading.get(index)
        if ref is None:
            self._loading[index] = self._actors[index].load.remote()
            return None
        ready, _ = ray.wait([ref], timeout=0)
        if not ready:
            return None
        del self._loading[index]
        try:
            return ray.get(ref)
        except (RayActorError, RayTaskError) as e:
            raise WorkerGone(type(e).__name__) from None

    def restart(self, index: int) -> None:
        try:
            ray.kill(self._actors[index], no_restart=False)  # Ray restarts it (max_restarts=-1)
        except Exception as e:  # already gone: the next poll sees a restart or a death
            log.debug("kill of worker %d: %s", index, e)

    def drain(self, grace_s: float, indices: list[int]) -> dict[int, WorkerStatus]:
        refs = {i: self._actors[i].drain.remote(grace_s) for i in indices}
        ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=grace_s + 5)
        out = {}
        for i, ref in refs.items():
            if ref in ready:
                try:
                    out[i] = ray.get(ref)
                except (RayActorError, RayTaskError):
                    continue
        return out

    def grow(self) -> int:
        self._actors.append(self._actor_cls.remote(self._cfg, self._redis_url))
        index = len(self._actors) - 1
        self._loading[index] = self._actors[index].load.remote()
        return index

    def spare_capacity(self) -> bool:
        return room_for(self._bundle)

    def request_capacity(self, workers: int) -> None:
        from ray.autoscaler.sdk import request_resources

        request_resources(bundles=[{k: v for k, v in self._bundle.items() if v > 0}] * workers)
        self._requested = workers > 0

    def close(self) -> None:
        if self._requested:  # Ray keeps a request until it is replaced
            try:
                self.request_capacity(0)
            except Exception as e:  # the job is ending anyway; say so, keep closing
                log.warning("could not withdraw the autoscaler request: %s", redact_text(str(e)))
        for a in self._actors:
            try:
                ray.kill(a)
            except Exception:
                pass
