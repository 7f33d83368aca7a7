"""One typed configuration: YAML file -> explicit CLI override layer -> validated `AppConfig`."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fpnstream.config.analytics import LineConfig, TrackingConfig, TrackingOverride, ZoneConfig

from fpnstream.core.errors import ConfigError
from fpnstream.core.redact import redact_url
from fpnstream.core.ids import STREAM_ID


class _Strict(BaseModel):
    # No inf/NaN anywhere: a timeout of inf overflows time_t, a NaN compares false to every bound.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class SourceConfig(_Strict):
    uri: str = Field(min_length=1)
    id: str | None = Field(default=None, pattern=f"^{STREAM_ID}$")
    fps: float | None = Field(default=None, gt=0, le=1000, description="sample down to this rate")
    realtime: bool = Field(default=False, description="files: emit frames at their recorded rate, like a camera")
    live: bool | None = Field(default=None, description="unset: by the URI (a path is a file, a network URL live); "
                              "false: a video file served over the network (http(s)://...mp4), read once to its end")
    tracking: TrackingOverride | None = Field(default=None, description="per-stream changes to `tracking:`")
    zones: tuple[ZoneConfig, ...] = Field(default=(), description="polygons: enter/exit events and occupancy")
    lines: tuple[LineConfig, ...] = Field(default=(), description="lines: cross events with a direction")

    @field_validator("uri")
    @classmethod
    def _url_parses(cls, v: str) -> str:
        # Not echoed (it may hold a password). A URL with a space would be redacted only up
        # to the space; FFmpeg reads it no better.
        if "://" in v and any(c.isspace() for c in v):
            raise ValueError("a URL may not hold spaces or other whitespace: percent-encode them (%20)")
        if "://" in v:
            try:
                urlsplit(redact_url(v))
            except ValueError as e:  # e.g. an unclosed [ of an IPv6 host
                raise ValueError(f"not a valid URL: {e}") from None
        return v

    @model_validator(mode="after")
    def _unique_names(self) -> SourceConfig:
        names = [z.name for z in self.zones] + [ln.name for ln in self.lines]
        if len(names) != len(set(names)):
            raise ValueError("zone and line names of a stream must be unique")
        return self


class DecodeConfig(_Strict):
    queue_size: int = Field(default=16, ge=1, le=10_000)
    rtsp_transport: Literal["tcp", "udp"] = "tcp"
    open_timeout_s: float = Field(default=10.0, gt=0, le=600, description="live: connect + first keyframe")
    read_timeout_s: float = Field(default=10.0, gt=0, le=600, description="live: no data for this long = dead")
    stall_timeout_s: float = Field(default=10.0, gt=0, le=600, description="live: no frame for this long = reconnect")
    reconnect_base_s: float = Field(default=0.5, gt=0, le=600)
    reconnect_max_s: float = Field(default=30.0, gt=0, le=3600)
    convert_threads: int = Field(
        default=1, ge=0, le=64,
        description="threads of each stream's YUV->RGB conversion; 0: FFmpeg picks (one per core, per stream)",
    )


class BatchConfig(_Strict):
    max_size: int = Field(default=4, ge=1, le=256)
    max_wait_ms: float = Field(default=50.0, ge=0, le=60_000)
    freshness_ms: float | None = Field(
        default=2000.0, gt=0, le=3_600_000,
        description="a live frame older than this at inference time is dropped as 'stale'; null: never",
    )


MODEL_NAMES = (
    "fasterrcnn_resnet50_fpn",
    "fasterrcnn_resnet50_fpn_v2",
    "fasterrcnn_mobilenet_v3_large_fpn",
    "fasterrcnn_mobilenet_v3_large_320_fpn",
)


class ModelConfig(_Strict):
    name: str = "fasterrcnn_resnet50_fpn"
    weights: str = Field(default="DEFAULT", description="DEFAULT | none | path to a .pth/.pt state_dict")
    weights_fallback: Literal["error", "random"] = Field(
        default="error", description="if DEFAULT weights cannot be fetched: fail, or warn and use random init"
    )
    labels: str | None = Field(default=None, description="class names file, one per line, line i = label i")
    num_classes: int | None = Field(default=None, ge=2, le=100_000)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    score_threshold: float = Field(default=0.5, ge=0.0, le=1.0)
    max_detections: int = Field(default=100, ge=1, le=10_000)
    classes: tuple[str, ...] | None = Field(default=None, description="allow-list of class names")
    min_size: int | None = Field(default=None, ge=32, le=4096)
    max_size: int | None = Field(default=None, ge=32, le=8192)
    torch_threads: int | None = Field(default=None, ge=1, le=1024, description="CPU threads for the detector (default: torch's)")
    lanes: int | None = Field(
        default=None, ge=1, le=64,
        description="forward passes run at once; default: on a CPU one per thread (each single-threaded), on CUDA 1")
    precision: Literal["fp32", "fp16", "bf16", "int8"] = Field(
        default="fp32", description="fp32 (exact torchvision parity); CUDA: autocast fp16/bf16; CPU: bf16 box head "
                                    "(needs AVX-512 BF16 or AMX) or int8 box head (check accuracy with "
                                    "`fpnstream bench`)")
    channels_last: bool = Field(default=False, description="NHWC memory layout for the backbone")
    compile: bool = Field(default=False, description="torch.compile the backbone and RPN head (static shape per "
                                                      "frame size); on CUDA also the box head and predictor (rows "
                                                      "padded to a bucket), with reduce-overhead/CUDA graphs")
    backbone_runtime: Literal["torch", "openvino"] = Field(
        default="torch", description="CPU: run the backbone+FPN with OpenVINO (pip install openvino), fp32")
    roi_align: Literal["torchvision", "gather"] = Field(
        default="torchvision", description="CPU: 'gather' pools the RoIs of every FPN level with one weighted "
                                           "gather-sum (embedding_bag), 3-4x faster than torchvision's kernel, "
                                           "equal to ~1e-6 (not bit-exact)")
    warmup_sizes: tuple[str, ...] = Field(
        default=(), description="frame sizes WxH to run once at load (compiles them), e.g. [1280x720]")
    plugin: str | None = Field(
        default=None, pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$",
        description="module:factory of your own detector, used instead of the torchvision model (README, Model)")

    @field_validator("name")
    @classmethod
    def _known_model(cls, v: str) -> str:
        if v not in MODEL_NAMES:
            raise ValueError(f"unknown model {v!r}; choose one of {', '.join(MODEL_NAMES)}")
        return v

    @field_validator("warmup_sizes", mode="before")
    @classmethod
    def _sizes(cls, v: Any) -> Any:
        if v is not None and not isinstance(v, (str, list, tuple)):
            raise ValueError("warmup_sizes is a list of WxH sizes, e.g. [1280x720]")
        items = [v] if isinstance(v, str) else list(v or ())
        for item in items:
            w, _, h = str(item).partition("x")
            digits = w.isascii() and h.isascii() and w.isdigit() and h.isdigit()
            if not (digits and 0 < int(w) <= 8192 and 0 < int(h) <= 8192):
                raise ValueError(f"frame size {item!r} is not WxH, e.g. 1280x720")
        return tuple(str(i) for i in items)

    @field_validator("classes", mode="before")
    @classmethod
    def _split_classes(cls, v: Any) -> Any:
        if isinstance(v, str):
            names = tuple(c.strip() for c in v.split(",") if c.strip())
            if not names:  # an empty allow-list would read as "every class"
                raise ValueError(f"no class names in {v!r}; give e.g. person,car")
            return names
        return v


class RayConfig(_Strict):
    address: str | None = Field(default=None, description="None: start a local Ray; 'auto' or host:port joins")
    in_process: bool = Field(default=False, description="run the detector in the driver, without Ray")
    num_actors: int | None = Field(default=None, ge=1, le=1024, description="default: one per GPU, else 1")
    num_gpus_per_actor: float = Field(default=1.0, gt=0, le=8)
    num_cpus_per_actor: float = Field(default=1.0, ge=0, le=256)
    max_inflight_per_actor: int = Field(default=2, ge=1, le=64)
    num_cpus: int | None = Field(default=None, ge=1, description="CPUs for a local Ray (default: all)")
    poll_interval_s: float = Field(default=5.0, gt=0, le=300, description="status poll timeout per worker")
    poll_misses: int = Field(default=3, ge=1, le=100, description="polls in a row without an answer = worker down")
    hang_factor: float = Field(default=10.0, ge=1, le=1000,
                               description="a batch running this many recent batch times means a hung worker...")
    hang_floor_s: float = Field(default=60.0, gt=0, le=3600, description="...but never before this many seconds")
    hang_compile_floor_s: float = Field(default=900.0, gt=0, le=7200,
                                        description="...or, for a batch that compiles a new shape (model.compile), "
                                                    "this many")
    max_actors: int = Field(default=64, ge=1, le=4096,
                            description="without num_actors the pool grows with the cluster up to this many workers")
    streams_per_worker: int = Field(default=16, ge=1, le=10_000,
                                    description="streams one worker is meant to hold; more asks Ray's autoscaler for workers")
    balance_tolerance: float = Field(default=1.0, ge=0, le=10_000,
                                     description="load (streams weighted by measured frames/s) a worker may exceed another by")
    balance_cooldown_s: float = Field(default=30.0, ge=0, le=86_400, description="a stream moved to balance stays put this long")


class RedisConfig(_Strict):
    url: str | None = Field(default=None, description="None: start an embedded redis-server")
    prefix: str = Field(default="fpnstream", min_length=1, pattern=r"^[A-Za-z0-9_.:\-]+$")
    cluster: bool | None = Field(default=None, description="speak Redis Cluster: true, false, or null = ask the server")
    maxlen: int = Field(default=100_000, ge=0, le=2**63 - 1,  # what Redis takes; beyond, every XADD fails
                        description="approximate MAXLEN per stream; 0 = no trimming")
    embedded_dir: str = ".fpnstream/redis"
    socket_timeout_s: float = Field(default=10.0, gt=0, le=3600)
    buffer_frames: int = Field(default=10_000, ge=0, description="results kept in memory while Redis is down")
    spool_dir: str | None = Field(default=".fpnstream/spool", description="beyond buffer_frames, results go here")
    spool_max_mb: float = Field(default=1024.0, ge=0, description="disk spool cap; past it results are dropped (counted)")
    outage_wait_s: float = Field(default=300.0, gt=0, description="at the end of a run, how long to wait for Redis")

    @field_validator("url")
    @classmethod
    def _scheme(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("redis://", "rediss://", "unix://")):
            # Not echoed: without "://" the pattern cannot tell a password in it.
            raise ValueError("the redis url must start with redis://, rediss:// or unix://")
        if v is not None and any(c.isspace() for c in v):  # a password with a space was half redacted
            raise ValueError("the redis url may not hold spaces or other whitespace: percent-encode them (%20)")
        if v is not None and not v.startswith("unix://"):
            try:
                db = urlsplit(redact_url(v)).path.strip("/")
            except ValueError:  # a malformed host: connect() says what is wrong with it
                db = ""
            if db and not db.isdigit():  # redis-py would ignore it and write to database 0
                raise ValueError(f"the redis url's database must be a number, not {db!r}: {redact_url(v)}")
        return v


class MetricsConfig(_Strict):
    port: int = Field(default=9108, ge=0, le=65535, description="0 disables the endpoint")
    host: str = Field(default="127.0.0.1", description="bind address; 0.0.0.0 to let Prometheus scrape remotely")


class PreviewConfig(_Strict):
    """Snapshots for `fpnstream preview`: the newest frame of each stream, as a small JPEG."""

    fps: float = Field(default=1.0, ge=0, le=30, description="snapshots per stream per second; 0 = off")
    max_width: int = Field(default=640, ge=32, le=8192, description="larger frames are scaled down")
    quality: int = Field(default=75, ge=1, le=95, description="JPEG quality")
    ttl_s: float = Field(default=60.0, gt=0, le=86_400, description="a stream's snapshot expires after this")


class AppConfig(_Strict):
    sources: tuple[SourceConfig, ...] = ()
    decode: DecodeConfig = DecodeConfig()
    batch: BatchConfig = BatchConfig()
    model: ModelConfig = ModelConfig()
    ray: RayConfig = RayConfig()
    redis: RedisConfig = RedisConfig()
    metrics: MetricsConfig = MetricsConfig()
    preview: PreviewConfig = PreviewConfig()
    tracking: TrackingConfig = TrackingConfig()
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    stop_grace_s: float = Field(default=30.0, gt=0, le=3600, description="on SIGTERM: time to drain before exit")
    keep_alive: bool = Field(default=False, description="keep running when every source has ended (streams added at runtime)")
    status_interval_s: float = Field(default=30.0, ge=0, le=86_400,
                                     description="progress: a live table on a terminal, else a log line per stream this often; 0 = off")
    restart: bool = Field(default=False, description="start every stream over as a new run, even one whose last run was cut short")

    @model_validator(mode="after")
    def _stream_tracking(self) -> AppConfig:
        for i, s in enumerate(self.sources):
            stream_tracking(s, self.tracking, f"sources.{i}.tracking")
        return self


def stream_tracking(source: SourceConfig, job: TrackingConfig, where: str = "tracking") -> TrackingConfig:
    """The tracking a stream runs with: its override over the job's, checked as a whole (a
    parameter of the other algorithm, say), so it fails here rather than when the stream opens."""
    if source.tracking is None:
        return job
    try:
        return source.tracking.over(job)
    except ValidationError as e:
        raise ValueError(f"{where}: " + _one_line(e)) from None


MAX_CONFIG_BYTES = 4 * 2**20  # far past any real config; /dev/zero would fill memory


def load_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    try:
        if not p.exists():
            raise ConfigError(f"config file not found: {p}")
        if not p.is_file():  # a FIFO would block for ever, a device never end
            raise ConfigError(f"config file {p} is not a regular file")
        if p.stat().st_size > MAX_CONFIG_BYTES:
            raise ConfigError(f"config file {p} is over {MAX_CONFIG_BYTES // 2**20} MiB: not a config")
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read config file {p}: {e}") from None
    try:
        data = yaml.safe_load(text)
    except RecursionError:
        raise ConfigError(f"malformed YAML in {p}: nested too deeply") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or "invalid YAML"
        raise ConfigError(f"malformed YAML in {p}{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a mapping at top level, not {type(data).__name__}")
    return data


def apply_overrides(raw: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """The one override layer: dotted keys (``model.name``) replace values; None means 'not given'."""
    merged = copy.deepcopy(raw)
    for dotted, value in overrides.items():
        if value is None:
            continue
        node = merged
        *parents, leaf = dotted.split(".")
        for key in parents:
            child = node.get(key)
            if child is None:
                child = node[key] = {}
            elif not isinstance(child, dict):
                raise ConfigError(f"config key {key!r} must be a mapping to set {dotted}")
            node = child
        node[leaf] = value
    return merged


def build_config(raw: dict[str, Any]) -> AppConfig:
    try:
        return AppConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError("invalid config: " + _one_line(e)) from None


def make_source(**fields: Any) -> SourceConfig:
    """A source from the command line: ConfigError (one line) if it is not valid."""
    try:
        return SourceConfig(**fields)
    except ValidationError as e:
        raise ConfigError("invalid source: " + _one_line(e)) from None


def load_config(path: str | Path | None, overrides: dict[str, Any] | None = None) -> AppConfig:
    raw = load_yaml(path) if path else {}
    return build_config(apply_overrides(raw, overrides or {}))


def _one_line(err: ValidationError) -> str:
    parts = []
    for item in err.errors():
        # Keys come from user YAML: escape control characters so the error stays one line.
        loc = ".".join(str(x) for x in item["loc"]).encode("unicode_escape").decode("ascii")
        msg = " ".join(item["msg"].removeprefix("Value error, ").split())
        if item["type"] == "extra_forbidden":
            msg = "unknown key"
        parts.append(f"{loc}: {msg}" if loc else msg)  # a whole-model check names its place itself
    # Input values are left out on purpose: a URL value could carry a password.
    return "; ".join(parts)
