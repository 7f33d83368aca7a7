"""deploy/: promtool on the Prometheus files, the dashboard and alerts against the metric
names the exporter really declares, compose and KubeRay manifests' required fields."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from fpnstream.observe.metrics import DriverMetrics, Metrics

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
PROMQL_NAME = re.compile(r"\b(fpnstream_[a-z0-9_]+)\b")
SUFFIXES = ("_bucket", "_sum", "_count", "_total", "_info")


def exported_series_names() -> set[str]:
    """Every series name the exporter can produce (histogram parts, counters' _total, info)."""
    registry = Metrics().registry
    DriverMetrics(registry)  # the coordinator's series, served beside the workers' on Ray
    text = generate_latest(registry).decode()
    names = set()
    for fam in text_string_to_metric_families(text):
        names.add(fam.name)
        if fam.type == "histogram":
            names |= {fam.name + s for s in ("_bucket", "_sum", "_count")}
        elif fam.type == "counter":
            names.add(fam.name + "_total")
        elif fam.type == "info":
            names.add(fam.name + "_info")
    return names


def dashboard_exprs() -> list[str]:
    dash = json.loads((DEPLOY / "grafana" / "dashboards" / "fpnstream.json").read_text())
    return [t["expr"] for p in dash["panels"] for t in p["targets"]]


def alert_exprs() -> list[str]:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    return [r["expr"] for g in rules["groups"] for r in g["rules"]]


def test_dashboard_is_current_with_its_builder():
    import importlib.util

    spec = importlib.util.spec_from_file_location("build_dashboard", DEPLOY / "grafana" / "build_dashboard.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    committed = json.loads((DEPLOY / "grafana" / "dashboards" / "fpnstream.json").read_text())
    assert committed == mod.build(), "run python deploy/grafana/build_dashboard.py"


@pytest.mark.parametrize("source", ["dashboard", "alerts"])
def test_promql_names_only_real_metrics(source):
    exprs = dashboard_exprs() if source == "dashboard" else alert_exprs()
    known = exported_series_names()
    used = {n for e in exprs for n in PROMQL_NAME.findall(e)}
    assert used, "no fpnstream metric referenced at all"
    assert used <= known, f"unknown metric names: {sorted(used - known)}"


def test_dashboard_covers_what_operators_need():
    exprs = " ".join(dashboard_exprs())
    for needed in ("fpnstream_stage_seconds_bucket", "fpnstream_end_to_end_seconds_bucket",
                   "fpnstream_frames_published_total", "fpnstream_frames_dropped_total", "fpnstream_queue_depth",
                   "fpnstream_batch_size", "fpnstream_gpu_memory_bytes", "fpnstream_source_up",
                   "fpnstream_source_reconnects_total", "fpnstream_publish_backlog"):
        assert needed in exprs, needed
    for q in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({q}, sum by (le, stage)" in exprs


@pytest.mark.parametrize("args", [["check", "config", "prometheus/prometheus.yml"], ["check", "rules", "prometheus/alerts.yml"]])
def test_promtool(args):
    promtool = shutil.which("promtool")
    assert promtool, "promtool missing: scripts/system-deps.sh installs Debian's prometheus package"
    proc = subprocess.run([promtool, *args], cwd=DEPLOY, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout + proc.stderr


def test_grafana_provisioning_points_at_the_dashboard():
    ds = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())
    assert ds["datasources"][0]["type"] == "prometheus"
    dash = json.loads((DEPLOY / "grafana/dashboards/fpnstream.json").read_text())
    uids = {t["datasource"]["uid"] for p in dash["panels"] for t in p["targets"]}
    assert uids == {ds["datasources"][0]["uid"]}
    prov = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/fpnstream.yml").read_text())
    assert prov["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"


def test_compose_file():
    compose_dir = DEPLOY / "compose"
    doc = yaml.safe_load((compose_dir / "docker-compose.yml").read_text())
    services = doc["services"]
    assert {"redis", "prometheus", "grafana", "ray-head", "ray-gpu-worker", "fpnstream"} <= set(services)
    cmd = services["fpnstream"]["command"]
    assert cmd[:2] == ["fpnstream", "run"] and "configs/cluster.yaml" in cmd and "--redis-url" in cmd
    gpu = services["ray-gpu-worker"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and "gpu" in gpu["capabilities"]
    for svc in services.values():  # every bind mount's host side exists (or is the models dir)
        for vol in svc.get("volumes", []):
            host = vol.split(":")[0]
            if host.startswith("."):
                assert (compose_dir / host).exists() or host.endswith("models"), vol
        build = svc.get("build")
        if build:
            assert (compose_dir / build["context"] / build["dockerfile"]).is_file()
    assert "fpnstream:9108" in (DEPLOY / "prometheus" / "prometheus.yml").read_text()


def _check_cluster_spec(spec: dict) -> None:
    head = spec["headGroupSpec"]
    assert "rayStartParams" in head
    assert head["template"]["spec"]["containers"][0]["image"]
    for group in spec["workerGroupSpecs"]:
        assert group["groupName"] and "rayStartParams" in group
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        container = group["template"]["spec"]["containers"][0]
        assert container["image"]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_kuberay_manifests():
    docs = list(yaml.safe_load_all((DEPLOY / "kuberay" / "raycluster.yaml").read_text()))
    cluster = next(d for d in docs if d["kind"] == "RayCluster")
    assert cluster["apiVersion"] == "ray.io/v1" and cluster["metadata"]["name"]
    _check_cluster_spec(cluster["spec"])
    monitor = next(d for d in docs if d["kind"] == "PodMonitor")
    assert monitor["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"
    auto = yaml.safe_load((DEPLOY / "kuberay" / "raycluster-autoscaling.yaml").read_text())
    _check_cluster_spec(auto["spec"])
    assert auto["spec"]["enableInTreeAutoscaling"] is True
    group = auto["spec"]["workerGroupSpecs"][0]
    assert 1 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"] <= 64  # ray.max_actors default
    job = yaml.safe_load((DEPLOY / "kuberay" / "rayjob.yaml").read_text())
    assert job["kind"] == "RayJob" and job["apiVersion"] == "ray.io/v1"
    assert job["spec"]["entrypoint"].startswith("fpnstream run")
    _check_cluster_spec(job["spec"]["rayClusterSpec"])
