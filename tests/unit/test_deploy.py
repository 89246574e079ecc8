"""deploy/: the Prometheus config, the alert rules and their tests, Grafana provisioning.

promtool checks the Prometheus files. CI installs it, so a machine without it fails these
tests (with a message saying how to get it) rather than skipping them: a skipped check
would let broken rules ship. The files are checked where compose mounts them: the mounts
are read from docker-compose.yml and mirrored in a temporary directory.

Every metric name in an alert or dashboard expression must be one Tally exports
(app/metrics.py), so renaming a metric cannot silently blank a panel or an alert.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

# PyYAML is installed with uvicorn[standard], a dependency of Tally.
import yaml  # type: ignore[import-untyped]
from prometheus_client import CollectorRegistry

from app.metrics import Metrics

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
ALERTS = DEPLOY / "alerts.yml"
ALERTS_TEST = DEPLOY / "alerts_test.yml"
PROMETHEUS = DEPLOY / "prometheus.yml"
GRAFANA = DEPLOY / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "tally.json"
COMPOSE = ROOT / "docker-compose.yml"

EXPECTED_ALERTS = {
    "TallyFlushLagHigh",
    "TallyPendingStuck",
    "TallyFlusherHalted",
    "TallyFlusherDown",
    "TallyRedisMemoryHigh",
    "TallyHigh5xxRate",
    "TallyDependencyErrors",
    "TallyIngestLatencyHigh",
}
# Series Prometheus makes itself, not Tally.
PROMETHEUS_SERIES = {"up"}
# Grafana's variables, replaced by a duration so the expressions parse as plain PromQL.
GRAFANA_VARIABLE = re.compile(r"\$\{?__(?:rate_interval|interval|range)\}?")
PROMQL_WORDS = {
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "inf",
    "nan",
}
SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
}


# -- helpers --------------------------------------------------------------------------


def promtool() -> str:
    """promtool's path; a clear failure, not a skip, when it is missing."""
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(
            "promtool is not on PATH. The deploy/ checks need it (CI installs it): "
            "`apt-get install prometheus` on Debian/Ubuntu, or put the promtool binary "
            "of a Prometheus release (https://prometheus.io/download/) on PATH."
        )
    return path


def run(*command: str | Path, cwd: Path = ROOT) -> str:
    """Run a command; assert it exits 0 and return its output."""
    result = subprocess.run(
        [str(c) for c in command],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = result.stdout + result.stderr
    shown = " ".join(map(str, command))
    assert result.returncode == 0, f"{shown} exited {result.returncode}:\n{output}"
    return output


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def compose_service(name: str) -> dict[str, Any]:
    service: dict[str, Any] = load_yaml(COMPOSE)["services"][name]
    return service


def deploy_mounts(service: str) -> list[tuple[Path, PurePosixPath]]:
    """(host path, container path) of the service's bind mounts from ./deploy."""
    mounts = []
    for volume in compose_service(service)["volumes"]:
        source, target, *_mode = volume.split(":")
        if source.startswith("./deploy"):
            mounts.append((ROOT / source, PurePosixPath(target)))
    assert mounts, f"compose service {service} mounts nothing from ./deploy"
    return mounts


def mirror_mounts(service: str, root: Path) -> None:
    """Copy the service's ./deploy mounts to where the container sees them, under root."""
    for source, target in deploy_mounts(service):
        destination = root / target.relative_to("/")
        if source.is_dir():
            shutil.copytree(source, destination)
        else:
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source, destination)


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in load_yaml(ALERTS)["groups"] for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return loaded


def dashboard_panels() -> list[dict[str, Any]]:
    """Every panel, rows' collapsed children included, rows themselves excluded."""
    out = []
    for panel in dashboard()["panels"]:
        if panel["type"] == "row":
            out.extend(panel.get("panels", []))
        else:
            out.append(panel)
    return out


def dashboard_exprs() -> list[str]:
    return [target["expr"] for panel in dashboard_panels() for target in panel["targets"]]


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects (not functions, keywords or labels)."""
    text = GRAFANA_VARIABLE.sub("5m", expr)
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', text)  # string literals
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range and subquery durations
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names: set[str] = set()
    for match in re.finditer(r"(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?", text):
        word, is_call = match.groups()
        if not is_call and word.lower() not in PROMQL_WORDS:
            names.add(word)
    return names


def exported_names() -> set[str]:
    """Every sample name Tally's metrics expose, from a fresh registry."""
    registry = CollectorRegistry()
    Metrics(registry)
    names: set[str] = set()
    for family in registry.collect():
        assert family.type in SUFFIXES, f"{family.name}: no suffixes known for {family.type}"
        names.update(family.name + suffix for suffix in SUFFIXES[family.type])
    return names


# -- promtool ---------------------------------------------------------------------------


def test_alert_rules_are_valid() -> None:
    output = run(promtool(), "check", "rules", ALERTS)
    assert f"{len(EXPECTED_ALERTS)} rules found" in output


def test_alert_rule_unit_tests_pass() -> None:
    run(promtool(), "test", "rules", ALERTS_TEST)


def test_prometheus_config_is_valid_where_compose_mounts_it(tmp_path: Path) -> None:
    mirror_mounts("prometheus", tmp_path)
    command = compose_service("prometheus")["command"]
    (flag,) = [arg for arg in command if arg.startswith("--config.file=")]
    config = tmp_path / PurePosixPath(flag.split("=", 1)[1]).relative_to("/")
    output = run(promtool(), "check", "config", config, cwd=tmp_path)
    # The rule file was found where compose mounts it (next to the config), and checked.
    assert "1 rule files found" in output
    assert f"Checking {config.parent / 'alerts.yml'}" in output


def test_dashboard_expressions_are_valid_promql(tmp_path: Path) -> None:
    rules = [
        {"record": f"tally:dashboard_expr_{i}", "expr": GRAFANA_VARIABLE.sub("5m", expr)}
        for i, expr in enumerate(dashboard_exprs())
    ]
    path = tmp_path / "dashboard_exprs.yml"
    path.write_text(
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}), encoding="utf-8"
    )
    run(promtool(), "check", "rules", path)


# -- Prometheus config and rules ----------------------------------------------------------


def test_scrape_jobs_match_compose() -> None:
    config = load_yaml(PROMETHEUS)
    assert config["global"]["scrape_interval"] == "15s"
    assert config["rule_files"] == ["alerts.yml"]
    jobs = {
        job["job_name"]: [t for sc in job["static_configs"] for t in sc["targets"]]
        for job in config["scrape_configs"]
    }
    assert jobs == {"tally-api": ["api:8080"], "tally-flusher": ["flusher:9091"]}
    api = compose_service("api")["command"]
    assert api[api.index("--port") + 1] == "8080"
    # Compose's flusher serves no metrics until it runs with --metrics-port (see the
    # comment in prometheus.yml); once it does, the port must be the one scraped.
    flusher = compose_service("flusher")["command"]
    if "--metrics-port" in flusher:
        assert flusher[flusher.index("--metrics-port") + 1] == "9091"


def test_every_alert_is_complete() -> None:
    rules = alert_rules()
    assert {rule["alert"] for rule in rules} == EXPECTED_ALERTS
    for rule in rules:
        name = rule["alert"]
        assert "for" in rule, name
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        assert rule["annotations"]["summary"].strip(), name
        assert len(rule["annotations"]["description"]) > 100, f"{name}: say what to do"
    severity = {rule["alert"]: rule["labels"]["severity"] for rule in rules}
    assert severity["TallyFlusherHalted"] == "critical"


# -- metric names -----------------------------------------------------------------------


def test_metric_name_extraction() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le) (rate(a_bucket{route="/x", s=~"5.."}[5m])))'
        ' > 0.025 and on(job) b offset 5m or label_replace(c, "d", "e", "", "")'
        " / ignoring(x) sum without (y) (rate(d_total[$__rate_interval])) > bool 1e3"
    )
    assert metric_names(expr) == {"a_bucket", "b", "c", "d_total"}


def test_exported_names_include_suffixes() -> None:
    names = exported_names()
    assert {
        "tally_http_requests_total",
        "tally_http_request_duration_seconds_bucket",
        "tally_flush_lag_seconds",
    } <= names
    assert "tally_http_requests" not in names


def test_every_referenced_metric_exists() -> None:
    known = exported_names() | PROMETHEUS_SERIES
    sources = {f"alert {rule['alert']}": rule["expr"] for rule in alert_rules()}
    sources |= {f"dashboard expr {expr!r}": expr for expr in dashboard_exprs()}
    for where, expr in sources.items():
        names = metric_names(expr)
        assert names, f"{where}: selects no metric"
        assert names <= known, f"{where}: unknown metrics {sorted(names - known)}"
    # The rule tests feed the series Tally really exports.
    for test in load_yaml(ALERTS_TEST)["tests"]:
        for series in test["input_series"]:
            name = series["series"].split("{", 1)[0]
            assert name in known, f"alerts_test.yml series {name}: not a Tally metric"


# -- Grafana ----------------------------------------------------------------------------


def test_dashboard_is_valid() -> None:
    board = dashboard()
    assert board["uid"] == "tally"
    assert board["schemaVersion"] >= 39
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    panels = dashboard_panels()
    assert len(panels) >= 10
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": "prometheus"}, panel["title"]
        assert panel["targets"], panel["title"]
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "prometheus", panel["title"]
            assert target["expr"].strip(), panel["title"]
        position = panel["gridPos"]
        assert position["x"] + position["w"] <= 24, panel["title"]


def test_grafana_provisioning_matches_the_mount(tmp_path: Path) -> None:
    (source, target), *_others = deploy_mounts("grafana")
    assert source == GRAFANA
    assert target == PurePosixPath("/etc/grafana/provisioning")  # Grafana's default
    datasources = load_yaml(GRAFANA / "datasources/prometheus.yml")["datasources"]
    assert [(d["uid"], d["type"], d["url"]) for d in datasources] == [
        ("prometheus", "prometheus", "http://prometheus:9090")
    ]
    # The file provider's path, seen from inside the container, holds the dashboard.
    mirror_mounts("grafana", tmp_path)
    (provider,) = load_yaml(GRAFANA / "dashboards/dashboards.yml")["providers"]
    assert provider["type"] == "file"
    folder = tmp_path / PurePosixPath(provider["options"]["path"]).relative_to("/")
    assert (folder / DASHBOARD.name).read_bytes() == DASHBOARD.read_bytes()
