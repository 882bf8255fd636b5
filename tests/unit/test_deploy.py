"""Static checks of the deployment files against the code they deploy.

docker-compose.yml, deploy/k8s/, the Grafana dashboard and the Prometheus rules are only
exercised for real on a cluster; these tests catch what breaks them silently: a panel or an
alert on a metric name that does not exist, a mount of a file that is not in the repository,
a RATING_* variable the worker never reads, topics or partition counts that drifted apart.
"""

from __future__ import annotations

import copy
import json
import math
import re
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import kubernetes_validate.utils
import pytest
import yaml

from rating.kafka_local import pinned_version
from rating.metrics import Metrics
from rating.settings import Settings, Topics
from rating.streaming import topics as topics_module

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE = ROOT / "docker-compose.yml"
K8S = DEPLOY / "k8s"
PROMETHEUS = DEPLOY / "prometheus"
DASHBOARD = DEPLOY / "grafana" / "dashboard.json"
TOPICS_SCRIPT = DEPLOY / "kafka" / "create-topics.sh"

WEB_PORT = 6066
WORKERS = ("worker-1", "worker-2")

# A metric name in a PromQL expression; recording rules (rating:...) use colons instead.
METRIC_RE = re.compile(r"\brating_[a-z0-9_]+\b")
RECORDED_RE = re.compile(r"\brating:[a-z0-9_:]+")
# `name{` = a selector; functions and `by (...)` are followed by a parenthesis instead.
SELECTOR_RE = re.compile(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{")

# Name suffixes each Prometheus metric type adds to its family name in the exposition.
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
}


@cache
def exposed_metric_names() -> frozenset[str]:
    """Every series name a worker can expose, from the real collectors."""
    names: set[str] = set()
    for family in Metrics().registry.collect():
        names.update(family.name + suffix for suffix in _SUFFIXES.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return frozenset(names)


def unknown_metrics(expr: str) -> set[str]:
    return set(METRIC_RE.findall(expr)) - exposed_metric_names()


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def env_dict(env: Any) -> dict[str, str]:
    """Compose `environment:` as a dict, whether written as a mapping or a list."""
    if env is None:
        return {}
    if isinstance(env, dict):
        return {k: "" if v is None else str(v) for k, v in env.items()}
    return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)


def setting_env_names() -> set[str]:
    """The RATING_* variables the worker reads (settings.py ignores unknown ones silently)."""
    names = {f"RATING_{name.upper()}" for name in Settings.model_fields if name != "topics"}
    names |= {f"RATING_TOPIC_{name.upper()}" for name in Topics.model_fields}
    return names


def contract_topics() -> set[str]:
    return {field.default for field in Topics.model_fields.values()}


# --------------------------------------------------------------------------- metrics helper


def test_metric_names_come_from_the_collectors() -> None:
    names = exposed_metric_names()
    # One of each type, to prove the suffix handling rather than the regex.
    assert "rating_cdrs_consumed_total" in names
    assert "rating_processing_latency_seconds_bucket" in names
    assert "rating_recharge_outstanding" in names
    assert "rating_worker_info" in names
    assert unknown_metrics("rate(rating_cdrs_consumd_total[5m])") == {"rating_cdrs_consumd_total"}
    assert unknown_metrics('rating:slo:ratio_rate5m + up{job="rating"}') == set()


# --------------------------------------------------------------------------- docker-compose


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_yaml(COMPOSE)


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]


def test_compose_has_the_whole_stack(services: dict[str, Any]) -> None:
    expected = {"kafka", "topics", *WORKERS, "billing-sim", "prometheus", "grafana"}
    assert expected <= set(services), f"missing services: {expected - set(services)}"


def test_compose_third_party_images_are_pinned(services: dict[str, Any]) -> None:
    for name, service in services.items():
        if "build" in service:
            continue  # our own image, built from this repository
        image = service.get("image", "")
        repo, _, tag = image.rpartition(":")
        assert repo, f"{name}: image {image!r} has no tag"
        assert "/" not in tag, f"{name}: image {image!r} has no tag (a registry port?)"
        assert tag != "latest", f"{name}: image {image!r} must be pinned, not latest"


def test_compose_builds_our_image_from_the_dockerfile(services: dict[str, Any]) -> None:
    for name in (*WORKERS, "billing-sim"):
        build = services[name]["build"]
        context = build if isinstance(build, str) else build.get("context", ".")
        dockerfile = (
            "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
        )
        assert (ROOT / context / dockerfile).is_file(), f"{name}: no {dockerfile} in {context}"
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    assert 'ENTRYPOINT ["rating"]' in dockerfile


def test_compose_kafka_runs_in_kraft_mode(services: dict[str, Any]) -> None:
    kafka = services["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    env = env_dict(kafka.get("environment"))
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"]
    assert "CONTROLLER" in env["KAFKA_CONTROLLER_LISTENER_NAMES"]
    assert env["CLUSTER_ID"]
    assert not any("ZOOKEEPER" in key for key in env), "KRaft needs no ZooKeeper"
    # The workers' bootstrap address must be one the broker advertises.
    advertised = {
        listener.split("://", 1)[1] for listener in env["KAFKA_ADVERTISED_LISTENERS"].split(",")
    }
    for name in (*WORKERS, "billing-sim"):
        bootstrap = env_dict(services[name]["environment"])["RATING_KAFKA_BOOTSTRAP"]
        assert set(bootstrap.split(",")) <= advertised, f"{name}: {bootstrap} not advertised"


def test_compose_workers(services: dict[str, Any]) -> None:
    host_ports = []
    known = setting_env_names()
    for name in WORKERS:
        worker = services[name]
        assert worker["command"] == ["worker"]
        env = env_dict(worker["environment"])
        assert env["RATING_KAFKA_BOOTSTRAP"]
        assert env.get("RATING_WEB_PORT", str(WEB_PORT)) == str(WEB_PORT)
        assert env["RATING_WEB_ADVERTISED_HOST"] == name, "peers reach each other by name"
        unknown = {key for key in env if key.startswith("RATING_")} - known
        assert not unknown, f"{name}: settings.py does not read {sorted(unknown)}"
        (mapping,) = worker["ports"]
        host, container = str(mapping).rsplit(":", 1)
        assert container == str(WEB_PORT)
        host_ports.append(host)
    assert len(set(host_ports)) == len(host_ports), f"host ports collide: {host_ports}"


def test_compose_partitions_agree(services: dict[str, Any]) -> None:
    partitions = env_dict(services["topics"]["environment"])["PARTITIONS"]
    for name in WORKERS:
        assert env_dict(services[name]["environment"])["RATING_PARTITIONS"] == partitions


def test_compose_depends_on_existing_services(services: dict[str, Any]) -> None:
    conditions = {"service_started", "service_healthy", "service_completed_successfully"}
    for name, service in services.items():
        depends = service.get("depends_on", {})
        targets = depends if isinstance(depends, list) else list(depends)
        assert set(targets) <= set(services), f"{name} depends on unknown {targets}"
        if isinstance(depends, dict):
            for target, spec in depends.items():
                assert spec["condition"] in conditions, f"{name} -> {target}"
                if spec["condition"] == "service_healthy":
                    assert "healthcheck" in services[target], f"{target} has no healthcheck"
    for name in (*WORKERS, "billing-sim"):
        condition = services[name]["depends_on"]["topics"]["condition"]
        assert condition == "service_completed_successfully", f"{name} must wait for topics"


def test_compose_host_mounts_exist(compose: dict[str, Any], services: dict[str, Any]) -> None:
    named_volumes = set(compose.get("volumes") or {})
    mounts = 0
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume["source"] if isinstance(volume, dict) else volume.split(":", 1)[0]
            if source.startswith((".", "/")):
                path = (ROOT / source).resolve()
                assert path.exists(), f"{name} mounts {source}, which is not in the repository"
                assert path.is_relative_to(ROOT), f"{name} mounts {source} from outside the repo"
                mounts += 1
            else:
                assert source in named_volumes, f"{name}: volume {source} is not declared"
    assert mounts >= 5  # topics script, three Prometheus files, Grafana provisioning + dashboard


def test_compose_prometheus_scrapes_the_workers() -> None:
    config = load_yaml(PROMETHEUS / "prometheus.yml")
    (job,) = [job for job in config["scrape_configs"] if job["job_name"] == "rating"]
    targets = {t for static in job["static_configs"] for t in static["targets"]}
    assert targets == {f"{name}:{WEB_PORT}" for name in WORKERS}
    for rule_file in config["rule_files"]:
        assert (PROMETHEUS / rule_file).is_file(), rule_file


# --------------------------------------------------------------------------- topics


def created_topics() -> dict[str, list[str]]:
    """`create NAME CONFIG...` lines of the topics script -> configs per topic."""
    topics = {}
    for line in TOPICS_SCRIPT.read_text(encoding="utf-8").splitlines():
        if line.startswith("create "):
            name, *configs = line.split()[1:]
            topics[name.strip('"').replace("$APP_ID", "rating")] = [c.strip('"') for c in configs]
    return topics


def test_topics_script_creates_every_topic_with_the_right_cleanup() -> None:
    topics = created_topics()
    internal = {"rating-ledger", "rating-accounts-changelog"}
    assert set(topics) == contract_topics() | internal
    compacted = {name for name, configs in topics.items() if "cleanup.policy=compact" in configs}
    assert compacted == {"rating.tenant-settings", "rating-accounts-changelog"}
    for name in set(topics) - compacted:
        assert "cleanup.policy=delete" in topics[name], name
        assert any(c.startswith("retention.ms=") for c in topics[name]), f"{name}: no retention"


# --------------------------------------------------------------------------- Kubernetes


@pytest.fixture(scope="module")
def manifests() -> list[dict[str, Any]]:
    return [
        doc
        for path in sorted(K8S.glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8"))
        if doc is not None
    ]


def one(manifests: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [
        doc
        for doc in manifests
        if doc["kind"] == kind and (name is None or doc["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def test_k8s_manifests_are_well_formed(manifests: list[dict[str, Any]]) -> None:
    kinds = set()
    for doc in manifests:
        assert doc.get("apiVersion"), doc
        assert doc.get("kind"), doc
        assert doc.get("metadata", {}).get("name"), doc
        assert "namespace" not in doc["metadata"], "manifests are namespace-less"
        kinds.add(doc["kind"])
    assert {"StatefulSet", "Service", "ConfigMap", "Secret", "Job", "PodDisruptionBudget"} <= kinds


@pytest.fixture(scope="module")
def worker(manifests: list[dict[str, Any]]) -> dict[str, Any]:
    statefulset = one(manifests, "StatefulSet")
    (container,) = statefulset["spec"]["template"]["spec"]["containers"]
    return container


def config_data(manifests: list[dict[str, Any]]) -> dict[str, str]:
    return one(manifests, "ConfigMap", "rating-config")["data"]


def test_k8s_statefulset_shape(manifests: list[dict[str, Any]]) -> None:
    statefulset = one(manifests, "StatefulSet")
    spec = statefulset["spec"]
    assert spec["replicas"] >= 2
    labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    assert spec["template"]["spec"]["terminationGracePeriodSeconds"] >= 30
    headless = one(manifests, "Service", spec["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    for service in (doc for doc in manifests if doc["kind"] == "Service"):
        assert service["spec"]["selector"].items() <= labels.items(), service["metadata"]["name"]
    pdb = one(manifests, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_k8s_worker_probes_hit_the_web_port(
    manifests: list[dict[str, Any]], worker: dict[str, Any]
) -> None:
    assert worker["command"] == ["rating", "worker"]
    ports = {port.get("name"): port["containerPort"] for port in worker["ports"]}
    assert config_data(manifests)["RATING_WEB_PORT"] == str(WEB_PORT)
    expected_paths = {"livenessProbe": "/health", "readinessProbe": "/ready"}
    for probe, path in expected_paths.items():
        http = worker[probe]["httpGet"]
        assert http["path"] == path, probe
        port = ports.get(http["port"], http["port"])
        assert port == WEB_PORT, f"{probe} checks port {http['port']}"


def test_k8s_worker_resources(worker: dict[str, Any]) -> None:
    resources = worker["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"])
    assert "memory" in resources["limits"]


def test_k8s_worker_environment(manifests: list[dict[str, Any]], worker: dict[str, Any]) -> None:
    env = {item["name"]: item for item in worker.get("env", [])}
    from_config = {}
    for source in worker.get("envFrom", []):
        config = one(manifests, "ConfigMap", source["configMapRef"]["name"])
        from_config.update(config["data"])
    assert "RATING_KAFKA_BOOTSTRAP" in env or "RATING_KAFKA_BOOTSTRAP" in from_config
    unknown = {key for key in [*env, *from_config] if key.startswith("RATING_")}
    unknown -= setting_env_names()
    assert not unknown, f"settings.py does not read {sorted(unknown)}"

    # The admin token only ever comes from a Secret.
    assert "RATING_ADMIN_TOKEN" not in from_config
    ref = env["RATING_ADMIN_TOKEN"]["valueFrom"]["secretKeyRef"]
    secret = one(manifests, "Secret", ref["name"])
    token = secret["stringData"][ref["key"]]
    assert "REPLACE-ME" in token, "the example Secret must hold an obvious placeholder"

    # The faust data dir is on a writable volume (the root filesystem is read-only).
    data_dir = from_config.get("RATING_DATA_DIR") or env["RATING_DATA_DIR"]["value"]
    assert data_dir in {mount["mountPath"] for mount in worker["volumeMounts"]}


def test_k8s_metrics_service_is_scraped(manifests: list[dict[str, Any]]) -> None:
    service = one(manifests, "Service", "rating-metrics")
    annotations = service["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(WEB_PORT)
    assert annotations["prometheus.io/path"] == "/metrics"
    assert [port["port"] for port in service["spec"]["ports"]] == [WEB_PORT]


def test_k8s_topics_job_runs_the_same_script(manifests: list[dict[str, Any]]) -> None:
    job = one(manifests, "Job")
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert re.fullmatch(r"apache/kafka:\d+\.\d+\.\d+", container["image"]), container["image"]
    (volume,) = pod["volumes"]
    script = one(manifests, "ConfigMap", volume["configMap"]["name"])
    assert script["data"]["create-topics.sh"] == TOPICS_SCRIPT.read_text(encoding="utf-8"), (
        "deploy/k8s/topics-job.yaml must embed deploy/kafka/create-topics.sh verbatim; "
        "copy the script into the ConfigMap (indented by four spaces)"
    )
    env = {item["name"]: item for item in container["env"]}
    assert env["PARTITIONS"]["value"] == config_data(manifests)["RATING_PARTITIONS"]


# --------------------------------------------------------------------------- Grafana

# Panel titles the dashboard must keep (what an SRE looks for during an incident).
DASHBOARD_PANELS = {
    "Workers up",
    "CDRs consumed / s by topic",
    "CDRs charged / s by product",
    "Rejections / s by reason",
    "Duplicates dropped / s",
    "Processing latency (consume -> charge)",
    "Event lag (call end -> charge)",
    "Consumer lag per partition",
    "Recharge commands by outcome",
    "Recharge commands outstanding",
    "Balance events by kind",
    "Tenants exhausted / below trigger",
    "Rate-card reloads",
}


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))  # collapsed rows nest their panels
    return [panel for panel in found if panel["type"] != "row"]


def test_dashboard_identity_and_datasource(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] == "rating-pipeline"
    assert dashboard["schemaVersion"] >= 36
    variables = {var["name"]: var for var in dashboard["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    for panel in panels(dashboard):
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]


def test_dashboard_has_the_panels(dashboard: dict[str, Any]) -> None:
    titles = [panel["title"] for panel in panels(dashboard)]
    assert set(titles) >= DASHBOARD_PANELS, f"missing: {DASHBOARD_PANELS - set(titles)}"
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels(dashboard):
        assert panel["targets"], f"{panel['title']} has no query"
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"]), panel["title"]


def test_dashboard_latency_panel_shows_percentiles(dashboard: dict[str, Any]) -> None:
    (panel,) = [p for p in panels(dashboard) if p["title"].startswith("Processing latency")]
    exprs = " ".join(target["expr"] for target in panel["targets"])
    for quantile in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({quantile}," in exprs


def test_dashboard_uses_only_exposed_metrics(dashboard: dict[str, Any]) -> None:
    used: set[str] = set()
    for panel in panels(dashboard):
        for target in panel["targets"]:
            unknown = unknown_metrics(target["expr"])
            assert not unknown, f"panel {panel['title']!r} queries unknown metrics {unknown}"
            used |= set(METRIC_RE.findall(target["expr"]))
    assert len(used) >= 15, "the dashboard should cover most of the worker's metrics"


# --------------------------------------------------------------------------- Prometheus rules

EXPECTED_ALERTS = {
    "RatingConsumerLagGrowing",
    "RatingRejectionRatioHigh",
    "RatingNoCDRs",
    "RatingRechargeFailures",
    "RatingProcessingLatencySLOBurn",
    "RatingWorkerDown",
    "RatingRateCardReloadFailing",
}


def rules(filename: str) -> list[dict[str, Any]]:
    return [rule for group in load_yaml(PROMETHEUS / filename)["groups"] for rule in group["rules"]]


def test_alerts_are_complete_and_documented() -> None:
    alerts = [rule for rule in rules("alerts.yml") if "alert" in rule]
    names = {rule["alert"] for rule in alerts}
    readme = (ROOT / "README.md").read_text()
    assert names >= EXPECTED_ALERTS, f"missing alerts: {EXPECTED_ALERTS - names}"
    for rule in alerts:
        name = rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning"}, name
        annotations = rule["annotations"]
        assert annotations["summary"], name
        assert annotations["description"], name
        # The README's Operating section has one heading per alert, named like the alert.
        assert annotations["runbook"] == f"README.md#{name.lower()}", name
        assert f"\n### {name}\n" in readme, f"README.md has no '### {name}' section"


def test_rules_reference_only_real_metrics() -> None:
    recorded = {rule["record"] for rule in rules("recording.yml")}
    for filename in ("alerts.yml", "recording.yml"):
        for rule in rules(filename):
            name = rule.get("alert") or rule["record"]
            expr = rule["expr"]
            assert not unknown_metrics(expr), f"{name}: unknown metrics {unknown_metrics(expr)}"
            assert set(RECORDED_RE.findall(expr)) <= recorded, f"{name}: unrecorded series"
            selectors = set(SELECTOR_RE.findall(expr))
            others = {s for s in selectors if not s.startswith(("rating_", "rating:"))}
            assert others <= {"up"}, f"{name}: selects non-rating metrics {others}"


def test_every_alert_has_a_firing_unit_test() -> None:
    tests = load_yaml(PROMETHEUS / "alerts_test.yml")
    assert tests["rule_files"] == ["recording.yml", "alerts.yml"]
    firing, quiet = set(), set()
    for case in tests["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check["exp_alerts"] else quiet).add(check["alertname"])
        for series in case["input_series"]:
            assert not unknown_metrics(series["series"]), series["series"]
    alerts = {rule["alert"] for rule in rules("alerts.yml") if "alert" in rule}
    assert alerts <= firing, f"alerts never shown firing: {alerts - firing}"
    assert quiet, "at least one test must show an alert staying quiet"


# --------------------------------------------------------------------------- schemas and versions

COMPOSE_SCHEMA = "check_jsonschema/builtin_schemas/vendor/compose-spec.json"
# The oldest Kubernetes release the manifests must validate on, and the newest schemas shipped.
K8S_VERSIONS = ("1.30.0", kubernetes_validate.utils.latest_version())


def _compose_schema() -> dict[str, Any]:
    """The Compose specification's JSON Schema as vendored (with its license) by the PyPI
    package check-jsonschema; nothing is fetched at test time. Read as a data file, not
    imported: the package's CLI needs a newer click than faust allows."""
    path = Path(str(metadata.distribution("check-jsonschema").locate_file(COMPOSE_SCHEMA)))
    return json.loads(path.read_text(encoding="utf-8"))


def test_compose_file_is_valid_against_the_compose_specification() -> None:
    schema = _compose_schema()
    validator = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())
    errors = sorted(validator.iter_errors(load_yaml(COMPOSE)), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)


def test_compose_schema_check_catches_a_mistake() -> None:
    validator = jsonschema.Draft202012Validator(_compose_schema())
    broken = load_yaml(COMPOSE)
    broken["services"]["kafka"]["helthcheck"] = broken["services"]["kafka"].pop("healthcheck")
    assert any("helthcheck" in e.message for e in validator.iter_errors(broken))


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_k8s_manifests_are_valid_against_the_kubernetes_schemas(
    manifests: list[dict[str, Any]], version: str
) -> None:
    problems = []
    for doc in manifests:
        try:
            # strict: an unknown (e.g. misspelt or misplaced) field is an error too.
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.caught.absolute_path)  # type: ignore[attr-defined]
            problems.append(f"{doc['kind']} {doc['metadata']['name']}: {path}: {exc.message}")
    assert not problems, "\n".join(problems)


def test_k8s_schema_check_catches_a_mistake(manifests: list[dict[str, Any]]) -> None:
    job = copy.deepcopy(one(manifests, "Job"))
    job["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(job, K8S_VERSIONS[-1], strict=True)


def kafka_images() -> dict[str, str]:
    """Where an apache/kafka image is used -> its tag."""
    images = {
        f"docker-compose.yml {name}": service["image"]
        for name, service in load_yaml(COMPOSE)["services"].items()
        if str(service.get("image", "")).startswith("apache/kafka:")
    }
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            for container in (
                (doc or {})
                .get("spec", {})
                .get("template", {})
                .get("spec", {})
                .get("containers", [])
            ):
                if container["image"].startswith("apache/kafka:"):
                    images[f"{path.name} {container['name']}"] = container["image"]
    return {where: image.split(":", 1)[1] for where, image in images.items()}


def test_kafka_release_is_the_same_in_compose_kubernetes_and_the_tests() -> None:
    tested = pinned_version()  # kafka/pom.xml: the broker `make test-kafka` runs
    images = kafka_images()
    assert {"docker-compose.yml kafka", "docker-compose.yml topics"} <= set(images)
    assert any(where.startswith("topics-job.yaml") for where in images)
    wrong = {where: tag for where, tag in images.items() if tag != tested}
    assert not wrong, f"kafka/pom.xml pins {tested}; these differ: {wrong}"
    assert tested.split(".")[0] == "4", "the suite tests a Kafka 4 release (KRaft only)"


def script_topic_configs(replication: int) -> dict[str, dict[str, str]]:
    """The topics create-topics.sh creates, with every $VAR and $((...)) evaluated."""
    text = TOPICS_SCRIPT.read_text(encoding="utf-8")
    env: dict[str, str] = {"APP_ID": "rating", "REPLICATION": str(replication)}
    env["MIN_ISR"] = "2" if replication > 1 else "1"
    for name, expr in re.findall(r"^([A-Z_]+)=\$\(\((.+)\)\)$", text, flags=re.MULTILINE):
        expanded = re.sub(r"[A-Z_]+", lambda m: env[m.group(0)], expr)
        assert re.fullmatch(r"[\d\s*]+", expanded), f"{name}: only products are understood"
        env[name] = str(math.prod(int(factor) for factor in expanded.split("*")))
    default_configs = re.search(r'for config in (".+?") "\$@"', text)
    assert default_configs is not None, "create() adds a config to every topic"

    def expand(word: str) -> str:
        return re.sub(r"\$([A-Z_]+)", lambda m: env[m.group(1)], word.strip('"'))

    common = [expand(default_configs.group(1))]
    topics = {}
    for name, configs in created_topics().items():
        pairs = [expand(c).split("=", 1) for c in [*common, *configs]]
        topics[expand(name)] = dict(pairs)
    return topics


@pytest.mark.parametrize("replication", [1, 3])
def test_workers_create_topics_exactly_as_the_deployment_does(replication: int) -> None:
    """A worker that creates a missing topic gives it the deployment's configs: compaction of
    the settings and the changelog, retention of everything else, min ISR."""
    worker = topics_module.contract_topics(Settings(replication=replication))
    assert worker == script_topic_configs(replication)


def test_compose_and_kubernetes_create_topics_with_the_workers_replication(
    services: dict[str, Any], manifests: list[dict[str, Any]]
) -> None:
    compose_topics = env_dict(services["topics"]["environment"])
    for name in WORKERS:
        worker_env = env_dict(services[name]["environment"])
        assert worker_env["RATING_REPLICATION"] == compose_topics["REPLICATION"]
    (job_container,) = one(manifests, "Job")["spec"]["template"]["spec"]["containers"]
    job_env = {item["name"]: item.get("value") for item in job_container["env"]}
    assert job_env["REPLICATION"] == config_data(manifests)["RATING_REPLICATION"]


def test_deployments_on_apache_kafka_run_without_seal_records(
    services: dict[str, Any], manifests: list[dict[str, Any]]
) -> None:
    """Seal records only work around Tansu's end offsets; make test-kafka runs without them."""
    for name in WORKERS:
        assert env_dict(services[name]["environment"])["RATING_CHANGELOG_SEAL"] == "false"
    assert config_data(manifests)["RATING_CHANGELOG_SEAL"] == "false"
