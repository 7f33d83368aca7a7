from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fpnstream.config.settings import AppConfig, apply_overrides, build_config, load_config
from fpnstream.core.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["default.yaml", "cluster.yaml"])
def test_shipped_configs_validate(name):
    cfg = load_config(REPO / "configs" / name)
    assert cfg.sources, "shipped configs name at least one source"


def test_cli_overrides_replace_yaml_values(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("model:\n  name: fasterrcnn_resnet50_fpn\n  score_threshold: 0.3\nsources:\n  - uri: a.mp4\n")
    cfg = load_config(p, {"model.score_threshold": 0.7, "model.name": None, "sources": [{"uri": "b.mp4", "id": "b"}]})
    assert cfg.model.score_threshold == 0.7
    assert cfg.model.name == "fasterrcnn_resnet50_fpn"  # None = flag not given
    assert [s.uri for s in cfg.sources] == ["b.mp4"]


def test_classes_accept_comma_string():
    cfg = build_config({"model": {"classes": "person, car"}})
    assert cfg.model.classes == ("person", "car")


@pytest.mark.parametrize(
    "raw, fragment",
    [
        ({"model": {"name": "yolo"}}, "unknown model 'yolo'"),
        ({"model": {"score_threshold": 1.5}}, "model.score_threshold"),
        ({"bogus": 1}, "bogus: unknown key"),
        ({"batch": {"max_size": 0}}, "batch.max_size"),
        ({"redis": {"url": "http://x"}}, "must start with redis://"),
        ({"sources": [{"uri": "a", "id": "has space"}]}, "sources.0.id"),
        ({"model": {"warmup_sizes": 5}}, "warmup_sizes is a list of WxH sizes"),
        ({"model": {"warmup_sizes": ["６４x４８"]}}, "is not WxH"),
        ({"redis": {"socket_timeout_s": float("inf")}}, "redis.socket_timeout_s: Input should be a finite number"),
        ({"redis": {"socket_timeout_s": 1e12}}, "redis.socket_timeout_s"),
        ({"batch": {"max_wait_ms": float("nan")}}, "batch.max_wait_ms"),
        ({"redis": {"maxlen": 10**20}}, "redis.maxlen"),  # beyond what XADD takes: every publish failed
        ({"redis": {"url": "redis://:pw@h:6379/abc"}}, "database must be a number, not 'abc'"),
        ({"model": {"classes": ",,,"}}, "no class names"),
        ({"sources": [{"uri": "a", "zones": [{"name": "z", "polygon": [[0, 0], [float("nan"), 0], [1, 1]]}]}]},
         "sources.0.zones.0.polygon"),
        # Tracking parameters: the library failed on these when the stream opened, mid-run.
        ({"tracking": {"params": {"frame_rate": 0}}}, "frame_rate must be above 0"),
        ({"tracking": {"params": {"lost_track_buffer": -5}}}, "lost_track_buffer must be a whole number >= 0"),
        ({"tracking": {"params": {"minimum_consecutive_frames": 2.5}}}, "minimum_consecutive_frames must be a whole"),
        ({"tracking": {"params": {"minimum_iou_threshold": 3}}}, "minimum_iou_threshold must be between 0 and 1"),
        ({"sources": [{"uri": "a", "tracking": {"params": {"bogus": 1}}}]}, "unknown any algorithm parameter(s): bogus"),
        ({"sources": [{"uri": "a", "tracking": {"params": {"high_conf_det_threshold": 0.5}}}],
          "tracking": {"algorithm": "sort"}}, "sources.0.tracking: unknown sort parameter(s): high_conf_det_threshold"),
    ],
)
def test_invalid_values_give_one_line(raw, fragment):
    with pytest.raises(ConfigError) as e:
        build_config(raw)
    assert fragment in str(e.value)
    assert "\n" not in str(e.value)


def test_redis_password_never_echoed_in_config_errors():
    with pytest.raises(ConfigError) as e:
        build_config({"redis": {"url": "http://user:s3cret@host"}})
    assert "s3cret" not in str(e.value)


def test_malformed_yaml_names_line(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("model:\n  name: [unclosed\n")
    with pytest.raises(ConfigError, match=r"malformed YAML .* line \d+"):
        load_config(p)


def test_missing_and_non_mapping_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    p = tmp_path / "list.yaml"
    p.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(p)


def test_config_paths_that_are_no_config_file_are_refused_at_once(tmp_path):
    """A FIFO blocked for ever, /dev/zero filled memory, deep nesting was a RecursionError."""
    import os

    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    for path in (fifo, tmp_path, "/dev/zero"):
        with pytest.raises(ConfigError, match="is not a regular file"):
            load_config(path)
    deep = tmp_path / "deep.yaml"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ConfigError, match="nested too deeply"):
        load_config(deep)
    big = tmp_path / "big.yaml"
    big.write_text("#" * (5 * 2**20))
    with pytest.raises(ConfigError, match="is over 4 MiB"):
        load_config(big)


@settings(max_examples=60, deadline=None)
@given(
    threshold=st.floats(min_value=0, max_value=1, allow_nan=False),
    size=st.integers(min_value=1, max_value=256),
    wait=st.floats(min_value=0, max_value=60_000, allow_nan=False),
)
def test_overrides_round_trip(threshold, size, wait):
    cfg = build_config(apply_overrides({}, {"model.score_threshold": threshold, "batch.max_size": size, "batch.max_wait_ms": wait}))
    assert (cfg.model.score_threshold, cfg.batch.max_size, cfg.batch.max_wait_ms) == (threshold, size, wait)
    # A dump of a valid config is itself a valid config.
    assert AppConfig.model_validate(cfg.model_dump()) == cfg


yaml_scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=False), st.text(max_size=20))
yaml_values = st.recursive(yaml_scalars, lambda c: st.one_of(st.lists(c, max_size=3), st.dictionaries(st.text(max_size=12), c, max_size=3)), max_leaves=8)
config_keys = st.sampled_from(["sources", "decode", "batch", "model", "ray", "redis", "metrics", "log_level",
                               "stop_grace_s", "keep_alive", "bogus"])


@settings(max_examples=200, deadline=None)
@given(raw=st.dictionaries(config_keys, yaml_values, max_size=4))
def test_any_yaml_gives_a_config_or_one_clear_line(raw, tmp_path_factory):
    import yaml

    p = tmp_path_factory.mktemp("y") / "c.yaml"
    p.write_text(yaml.safe_dump(raw))
    try:
        cfg = load_config(p)
    except ConfigError as e:
        assert "\n" not in str(e) and str(e)
    else:
        assert isinstance(cfg, AppConfig)
