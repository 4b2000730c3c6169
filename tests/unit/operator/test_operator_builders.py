"""Pure builders: every child's fields as the contract and Pod Security "restricted" want them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from roost_operator import builders
from roost_operator.builders import Owner
from roost_operator.spec import SpecError, parse_spec

OWNER = Owner(name="wine", namespace="ml", uid="1234")
REV = "abcdef0123"


def spec(**extra: Any) -> Any:
    return parse_spec({"model": {"uri": "s3://bucket/wine/model.onnx"}, **extra})


def env_of(manifest: dict[str, Any]) -> dict[str, Any]:
    container = manifest["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


class TestDeployment:
    def test_name_labels_selector_and_owner(self) -> None:
        d = builders.build_deployment(OWNER, spec(), REV, 3, "img:1")
        assert d["metadata"]["name"] == "wine-abcdef0123"
        labels = d["metadata"]["labels"]
        assert labels["roost.dev/modeldeployment"] == "wine"
        assert labels["roost.dev/revision"] == REV
        assert labels["roost.dev/serving"] == "true"
        assert labels["app.kubernetes.io/managed-by"] == "roost-operator"
        assert d["spec"]["template"]["metadata"]["labels"] == labels
        assert d["spec"]["selector"]["matchLabels"] == {
            "roost.dev/modeldeployment": "wine",
            "roost.dev/revision": REV,
        }
        assert d["spec"]["replicas"] == 3
        (ref,) = d["metadata"]["ownerReferences"]
        assert ref["uid"] == "1234"
        assert ref["controller"] is True
        assert ref["blockOwnerDeletion"] is True

    def test_env_carries_every_serving_setting(self) -> None:
        s = spec(
            model={
                "uri": "s3://b/m.onnx",
                "sha256": "a" * 64,
                "profileUri": "s3://b/profile.json",
            },
            server={
                "port": 9000,
                "maxBatchSize": 8,
                "maxDelayMs": 5,
                "threads": 2,
                "driftWindow": 500,
                "env": [{"name": "ROOST_LOG_LEVEL", "value": "debug"}],
            },
        )
        env = env_of(builders.build_deployment(OWNER, s, REV, 1, "img:1"))
        assert env["ROOST_MODEL"] == "s3://b/m.onnx"
        assert env["ROOST_SHA256"] == "a" * 64
        assert env["ROOST_PROFILE"] == "s3://b/profile.json"
        assert env["ROOST_NAME"] == "wine"
        assert env["ROOST_REVISION"] == REV
        assert env["ROOST_PORT"] == "9000"
        assert env["ROOST_MAX_BATCH_SIZE"] == "8"
        assert env["ROOST_MAX_DELAY_MS"] == "5"
        assert env["ROOST_THREADS"] == "2"
        assert env["ROOST_DRIFT_WINDOW"] == "500"
        assert env["ROOST_LOG_LEVEL"] == "debug"
        assert env["ROOST_HOST"] == {"fieldRef": {"apiVersion": "v1", "fieldPath": "status.podIP"}}
        assert env["POD_NAME"]["fieldRef"]["fieldPath"] == "metadata.name"
        assert env["POD_NAMESPACE"]["fieldRef"]["fieldPath"] == "metadata.namespace"

    def test_pods_drain_before_closing_and_spec_env_overrides_by_name(self) -> None:
        deployment = builders.build_deployment(OWNER, spec(), REV, 1, "img:1")
        env = env_of(deployment)
        assert env["ROOST_DRAIN_SECONDS"] == "3"
        # The server bounds its shutdown by the pod's own grace period.
        grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert env["ROOST_GRACE_SECONDS"] == str(grace)
        s = spec(server={"env": [{"name": "ROOST_DRAIN_SECONDS", "value": "10"}]})
        d = builders.build_deployment(OWNER, s, REV, 1, "img:1")
        names = [e["name"] for e in d["spec"]["template"]["spec"]["containers"][0]["env"]]
        assert names.count("ROOST_DRAIN_SECONDS") == 1
        assert env_of(d)["ROOST_DRAIN_SECONDS"] == "10"

    def test_optional_env_left_out(self) -> None:
        env = env_of(builders.build_deployment(OWNER, spec(), REV, 1, "img:1"))
        assert "ROOST_SHA256" not in env
        assert "ROOST_PROFILE" not in env

    def test_container_runs_roost_serve_with_probes(self) -> None:
        d = builders.build_deployment(OWNER, spec(), REV, 1, "img:1")
        c = d["spec"]["template"]["spec"]["containers"][0]
        assert c["command"] == ["roost", "serve"]
        assert c["image"] == "img:1"
        assert c["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
        assert c["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
        assert c["startupProbe"]["httpGet"]["path"] == "/v2/health/live"
        assert c["ports"] == [
            {"name": "http", "containerPort": 8080, "protocol": "TCP"},
            {"name": "grpc", "containerPort": 8081, "protocol": "TCP"},
        ]
        assert env_of(d)["ROOST_GRPC_PORT"] == "8081"
        assert c["terminationMessagePolicy"] == "FallbackToLogsOnError"

    def test_restricted_security_context(self) -> None:
        pod = builders.build_deployment(OWNER, spec(), REV, 1, "img:1")["spec"]["template"]["spec"]
        c = pod["containers"][0]["securityContext"]
        assert c["allowPrivilegeEscalation"] is False
        assert c["readOnlyRootFilesystem"] is True
        assert c["runAsNonRoot"] is True
        assert c["runAsUser"] == 10001
        assert c["capabilities"] == {"drop": ["ALL"]}
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False

    def test_scrape_annotations_follow_port(self) -> None:
        d = builders.build_deployment(OWNER, spec(server={"port": 9100}), REV, 1, "img:1")
        ann = d["spec"]["template"]["metadata"]["annotations"]
        assert ann == {
            "prometheus.io/scrape": "true",
            "prometheus.io/port": "9100",
            "prometheus.io/path": "/metrics",
        }

    def test_resources_and_credentials(self) -> None:
        s = spec(
            model={"uri": "s3://b/m.onnx", "credentials": {"secretName": "s3-creds"}},
            resources={"requests": {"cpu": "500m"}, "limits": {"memory": "1Gi"}},
        )
        c = builders.build_deployment(OWNER, s, REV, 1, "i")["spec"]["template"]["spec"][
            "containers"
        ][0]
        assert c["resources"] == {"requests": {"cpu": "500m"}, "limits": {"memory": "1Gi"}}
        assert c["envFrom"] == [{"secretRef": {"name": "s3-creds"}}]


class TestService:
    def test_selects_every_revision(self) -> None:
        svc = builders.build_service(OWNER)
        assert svc["metadata"]["name"] == "wine"
        assert svc["spec"]["selector"] == {
            "roost.dev/modeldeployment": "wine",
            "roost.dev/serving": "true",
        }
        assert svc["spec"]["ports"][0]["targetPort"] == "http"
        assert svc["spec"]["ports"][1] == {
            "name": "grpc",
            "port": 8081,
            "targetPort": "grpc",
            "protocol": "TCP",
            "appProtocol": "grpc",
        }
        assert svc["metadata"]["ownerReferences"][0]["kind"] == "ModelDeployment"

    def test_grpc_port_is_configurable_and_must_differ_from_the_http_port(self) -> None:
        d = builders.build_deployment(OWNER, spec(server={"grpcPort": 9000}), REV, 1, "img:1")
        ports = d["spec"]["template"]["spec"]["containers"][0]["ports"]
        assert ports[1] == {"name": "grpc", "containerPort": 9000, "protocol": "TCP"}
        with pytest.raises(SpecError, match=r"grpcPort and spec\.server\.port are both 8080"):
            spec(server={"grpcPort": 8080})


class TestRevisionService:
    def test_selects_one_revision(self) -> None:
        svc = builders.build_revision_service(OWNER, REV)
        assert svc["metadata"]["name"] == "wine-abcdef0123"
        assert svc["spec"]["selector"]["roost.dev/revision"] == REV


class TestPodDisruptionBudget:
    def test_wanted_only_with_more_than_one_pod(self) -> None:
        assert not builders.wants_pdb(spec(replicas=1))
        assert builders.wants_pdb(spec(replicas=2))
        assert builders.wants_pdb(
            spec(replicas=1, autoscaling={"minReplicas": 2, "maxReplicas": 4})
        )

    def test_one_pod_at_a_time(self) -> None:
        pdb = builders.build_pdb(OWNER)
        assert pdb["apiVersion"] == "policy/v1"
        assert pdb["spec"]["maxUnavailable"] == 1
        assert pdb["spec"]["selector"]["matchLabels"]["roost.dev/modeldeployment"] == "wine"


class TestHorizontalPodAutoscaler:
    def test_targets_the_modeldeployment(self) -> None:
        s = spec(
            autoscaling={
                "minReplicas": 2,
                "maxReplicas": 6,
                "targetCPUUtilizationPercentage": 70,
                "targetInflightRequests": 4,
            }
        )
        hpa = builders.build_hpa(OWNER, s)
        assert hpa["apiVersion"] == "autoscaling/v2"
        assert hpa["spec"]["scaleTargetRef"] == {
            "apiVersion": "roost.dev/v1alpha1",
            "kind": "ModelDeployment",
            "name": "wine",
        }
        assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 6)
        cpu, pods = hpa["spec"]["metrics"]
        assert cpu["resource"]["target"] == {"type": "Utilization", "averageUtilization": 70}
        assert pods["pods"]["metric"]["name"] == "roost_inflight_requests"
        assert pods["pods"]["target"] == {"type": "AverageValue", "averageValue": "4"}

    def test_inflight_target_says_what_it_needs(self) -> None:
        """No adapter ships with roost: the CRD says so, docs/autoscaling.md has the rule."""
        repo = Path(__file__).resolve().parents[3]
        crd = (repo / "crds" / "modeldeployment.yaml").read_text()
        assert "custom metrics API" in " ".join(crd.split())
        assert "docs/autoscaling.md" in crd
        doc = (repo / "docs" / "autoscaling.md").read_text()
        (rule,) = yaml.safe_load(doc.split("```yaml")[2].split("```")[0])["rules"]
        hpa = builders.build_hpa(
            OWNER,
            spec(autoscaling={"minReplicas": 1, "maxReplicas": 3, "targetInflightRequests": 2}),
        )
        (metric,) = hpa["spec"]["metrics"]
        assert rule["name"]["as"] == metric["pods"]["metric"]["name"] == "roost_inflight_requests"
        assert rule["seriesQuery"].startswith("roost_inflight_requests{")

    def test_cpu_default_when_no_target(self) -> None:
        hpa = builders.build_hpa(OWNER, spec(autoscaling={"minReplicas": 1, "maxReplicas": 3}))
        (metric,) = hpa["spec"]["metrics"]
        assert metric["resource"]["target"]["averageUtilization"] == 80

    def test_needs_autoscaling(self) -> None:
        with pytest.raises(ValueError, match="autoscaling"):
            builders.build_hpa(OWNER, spec())


class TestHTTPRoute:
    route = {
        "httpRoute": {
            "name": "wine-route",
            "parentRefs": [{"name": "gw", "namespace": "infra"}],
            "hostnames": ["wine.example"],
        }
    }

    def test_weights_split_stable_and_canary(self) -> None:
        r = builders.build_http_route(OWNER, spec(traffic=self.route), "aaaa", "bbbb", 20)
        assert r["metadata"]["name"] == "wine-route"
        assert r["spec"]["parentRefs"][0]["name"] == "gw"
        assert r["spec"]["parentRefs"][0]["namespace"] == "infra"
        assert r["spec"]["hostnames"] == ["wine.example"]
        backends = r["spec"]["rules"][0]["backendRefs"]
        assert [(b["name"], b["weight"]) for b in backends] == [
            ("wine-aaaa", 80),
            ("wine-bbbb", 20),
        ]

    def test_stable_only(self) -> None:
        r = builders.build_http_route(OWNER, spec(traffic=self.route), "aaaa", None, 0)
        assert [(b["name"], b["weight"]) for b in r["spec"]["rules"][0]["backendRefs"]] == [
            ("wine-aaaa", 100)
        ]


class TestGRPCRoute:
    route = {
        "grpcRoute": {
            "name": "wine-grpc",
            "parentRefs": [{"name": "gw"}],
            "hostnames": ["grpc.wine.example"],
        }
    }

    def test_same_weights_on_the_grpc_service_port(self) -> None:
        r = builders.build_grpc_route(OWNER, spec(traffic=self.route), "aaaa", "bbbb", 20)
        assert (r["kind"], r["metadata"]["name"]) == ("GRPCRoute", "wine-grpc")
        assert r["spec"]["hostnames"] == ["grpc.wine.example"]
        backends = r["spec"]["rules"][0]["backendRefs"]
        assert [(b["name"], b["port"], b["weight"]) for b in backends] == [
            ("wine-aaaa", 8081, 80),
            ("wine-bbbb", 8081, 20),
        ]

    def test_needs_a_grpc_route(self) -> None:
        with pytest.raises(ValueError, match="grpcRoute"):
            builders.build_grpc_route(OWNER, spec(), "aaaa", None, 0)
        with pytest.raises(SpecError, match=r"spec\.traffic\.grpcRoute needs a name"):
            spec(traffic={"grpcRoute": {"name": "x"}})


class TestLogging:
    def test_spec_logging_becomes_the_log_settings_and_its_secret(self) -> None:
        s = spec(
            model={"uri": "s3://b/m.onnx", "credentials": {"secretName": "models"}},
            logging={
                "uri": "s3://logs/wine",
                "sampleRate": 0.25,
                "format": "parquet",
                "redact": ["alcohol", "hue"],
                "credentials": {"secretName": "log-bucket"},
            },
        )
        d = builders.build_deployment(OWNER, s, REV, 1, "i")
        env = env_of(d)
        assert env["ROOST_LOG_URI"] == "s3://logs/wine"
        assert env["ROOST_LOG_SAMPLE_RATE"] == "0.25"
        assert env["ROOST_LOG_FORMAT"] == "parquet"
        assert env["ROOST_LOG_REDACT"] == "alcohol,hue"
        container = d["spec"]["template"]["spec"]["containers"][0]
        # The log's keys come last and win where both Secrets set one.
        assert container["envFrom"] == [
            {"secretRef": {"name": "models"}},
            {"secretRef": {"name": "log-bucket"}},
        ]

    def test_no_logging_no_log_env(self) -> None:
        env = env_of(builders.build_deployment(OWNER, spec(), REV, 1, "i"))
        assert not [name for name in env if name.startswith("ROOST_LOG_")]

    @pytest.mark.parametrize(
        ("logging", "message"),
        [
            ({"sampleRate": 0.5}, "spec.logging.uri is required"),
            ({"uri": "s3://l", "sampleRate": 2}, "sampleRate must be between 0 and 1"),
            ({"uri": "s3://l", "format": "csv"}, "format must be jsonl or parquet"),
            ({"uri": "s3://l", "redact": ["a,b"]}, "must not contain ','"),
        ],
    )
    def test_bad_logging_is_a_spec_error(self, logging: dict[str, Any], message: str) -> None:
        with pytest.raises(SpecError, match=message):
            spec(logging=logging)

    def test_spec_server_env_cannot_set_the_log_settings(self) -> None:
        with pytest.raises(SpecError, match=r"spec\.logging\.uri"):
            spec(server={"env": [{"name": "ROOST_LOG_URI", "value": "x"}]})
