"""`kubectl roost`: look at and steer ModelDeployment rollouts.

Installed as the console script `kubectl-roost`, so `kubectl roost ...` finds it on PATH.

    kubectl roost status NAME      revisions, weights, conditions, last analysis gates
    kubectl roost history NAME [--plot out.png [--timeline recorded.jsonl]]
    kubectl roost watch NAME --record recorded.jsonl [--interval 1] [--duration 600]
    kubectl roost promote|abort|retry NAME
    kubectl roost pause|resume NAME

promote / abort / retry set the annotation `roost.dev/<verb>` to a fresh RFC 3339 timestamp;
the operator acts once per new value and records it in `status.handledRequests` (see
docs/architecture.md, "Manual requests"). pause / resume merge-patch `spec.paused`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from roost_operator.api import GROUP, PLURAL, REQUEST_KINDS, VERSION
from roost_operator.shadow_view import shadow_lines, shadow_share
from roost_operator.timeline import get_path as _get
from roost_operator.times import parse_time, utc
from roost_operator.validation_view import validating, validation_lines


def request_token(now: datetime | None = None) -> str:
    """A fresh RFC 3339 token; microseconds keep two requests in one second distinct."""
    return utc(now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Left-aligned columns two spaces apart, like kubectl get."""
    cells = [[str(h) for h in headers], *([_cell(c) for c in row] for row in rows)]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells
    )


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def render_status(md: Mapping[str, Any]) -> str:
    """The readable status of one ModelDeployment object (as returned by the API)."""
    meta, spec, status = md.get("metadata", {}), md.get("spec", {}), md.get("status") or {}
    steps = _get(spec, "rollout", "steps") or []
    stable, canary = status.get("stable") or {}, status.get("canary") or {}
    canary_weight = int(canary.get("weight") or 0) if canary.get("revision") else 0
    held = validating(spec, canary)
    if held:
        canary_weight = 0  # held out of the Service until validated
    lines = [
        f"ModelDeployment {meta.get('namespace', '')}/{meta.get('name', '')}"
        f"   generation {meta.get('generation', '-')}"
        f" (observed {status.get('observedGeneration', '-')})"
        f"   paused: {_cell(bool(spec.get('paused', False)))}",
        f"Replicas: {spec.get('replicas', '-')} desired, {status.get('replicas', 0)} running, "
        f"{status.get('readyReplicas', 0)} ready",
        "",
    ]
    revisions: list[list[object]] = []
    if stable.get("revision"):
        revisions.append(
            [
                stable["revision"],
                "stable",
                f"{100 - canary_weight}%",
                stable.get("readyReplicas", 0),
                "-",
                stable.get("modelUri"),
            ]
        )
    if canary.get("revision"):
        step = canary.get("step")
        step_text = "-" if step is None else f"{int(step) + 1}/{len(steps)}"
        if step is not None and int(step) >= len(steps):
            step_text = "full scale"  # replacing the stable (no steps, or none of it ready)
        if canary.get("promotion"):
            step_text = "promoting at full scale"
        elif held:
            step_text += " validating (no traffic)"
        elif shadow_share(spec, step):
            step_text += f" shadow {shadow_share(spec, step)}% (copies only)"
        elif canary.get("stepStartedAt"):
            step_text += f" since {canary['stepStartedAt']}"
        revisions.append(
            [
                canary["revision"],
                "canary",
                f"{canary_weight}%",
                canary.get("readyReplicas", 0),
                step_text,
                canary.get("modelUri"),
            ]
        )
    if revisions:
        lines.append(table(["REVISION", "ROLE", "WEIGHT", "READY", "STEP", "MODEL"], revisions))
    else:
        lines.append("No revision serves yet.")
    conditions = status.get("conditions") or []
    if conditions:
        lines += [
            "",
            table(
                ["CONDITION", "STATUS", "REASON", "SINCE", "MESSAGE"],
                [
                    [
                        c.get("type"),
                        c.get("status"),
                        c.get("reason"),
                        c.get("lastTransitionTime"),
                        c.get("message") or "",
                    ]
                    for c in conditions
                ],
            ),
        ]
    lines += validation_lines(status, canary, held)
    lines += shadow_lines(spec, status)
    analysis = canary.get("lastAnalysis")
    if canary.get("revision"):
        lines += [
            "",
            f"Analyses: {canary.get('analysisCount', 0)}, consecutive failures: "
            f"{canary.get('consecutiveFailures', 0)} of "
            f"{_get(spec, 'rollout', 'analysis', 'failureLimit') or 2} allowed",
        ]
    if analysis:
        lines += [
            f"Last analysis {analysis.get('time', '-')}: {analysis.get('verdict', '-')}"
            + (f" ({analysis['message']})" if analysis.get("message") else ""),
            table(
                ["GATE", "VALUE", "THRESHOLD", "VERDICT"],
                [
                    [g.get("name"), g.get("value"), g.get("threshold"), g.get("verdict")]
                    for g in analysis.get("gates") or []
                ],
            ),
        ]
        # The sequential gates' evidence in words: estimate, interval against the margin.
        lines += [
            f"  {g.get('name')} ({g.get('mode', 'enforce')}): {g['message']}"
            for g in analysis.get("gates") or []
            if g.get("message")
        ]
    if status.get("failedRevision"):
        lines += [
            "",
            f"Failed revision {status['failedRevision']} is not retried until the spec changes "
            f"or `kubectl roost retry {meta.get('name', 'NAME')}`.",
        ]
    return "\n".join(lines)


def _duration(start: str | None, end: str | None) -> str | None:
    if not start or not end:
        return None
    began, ended = parse_time(start), parse_time(end)
    if began is None or ended is None:
        return None
    seconds = (ended - began).total_seconds()
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _provenance_rows(md: Mapping[str, Any]) -> list[dict[str, Any]]:
    """History entries, plus revisions no rollout brought (the first one): oldest first."""
    history = list(_get(md, "status", "history") or [])
    canary = (_get(md, "status", "canary") or {}).get("revision")
    seen = {h.get("revision") for h in history} | {canary}
    for rev, facts in (_get(md, "status", "revisions") or {}).items():
        if rev not in seen:
            first = {"revision": rev, "outcome": "Deployed", "reason": "first revision"}
            history.append({**facts, **first, "startedAt": facts.get("resolvedAt") or ""})
    return sorted(history, key=lambda h: str(h.get("startedAt") or ""))


def render_history(md: Mapping[str, Any]) -> str:
    """`status.history` as a table, oldest first; with the audit facts when roost recorded them.

    Those are the model reference, the registry version and run id, the model's sha256 and the
    field manager that changed the spec (kubectl, argocd-controller, helm, flux...).
    """
    history = _get(md, "status", "history") or []
    if any(h.get("manager") for h in history) or _get(md, "status", "revisions"):
        return _audit_table(_provenance_rows(md))
    if not history:
        return "No rollouts recorded yet."
    return table(
        ["REVISION", "OUTCOME", "STARTED", "FINISHED", "TOOK", "MODEL", "REASON"],
        [
            [
                h.get("revision"),
                h.get("outcome"),
                h.get("startedAt"),
                h.get("finishedAt"),
                _duration(h.get("startedAt"), h.get("finishedAt")),
                h.get("modelUri"),
                h.get("reason") or "",
            ]
            for h in history
        ],
    )


def _audit_table(rows: list[dict[str, Any]]) -> str:
    return table(
        [
            "REVISION",
            "OUTCOME",
            "FINISHED",
            "TOOK",
            "MODEL",
            "VERSION",
            "RUN",
            "SHA256",
            "MANAGER",
            "REASON",
        ],
        [
            [
                h.get("revision"),
                h.get("outcome"),
                h.get("finishedAt") or "-",
                _duration(h.get("startedAt"), h.get("finishedAt")) if h.get("finishedAt") else "-",
                h.get("reference") or h.get("modelUri"),
                h.get("version") or "-",
                str(h.get("runId") or "-")[:12],
                str(h.get("modelSha256") or "-")[:12],
                h.get("manager") or "-",
                h.get("reason") or "",
            ]
            for h in rows
        ],
    )


class PluginError(Exception):
    """A failure to report on stderr with exit status 1."""


class Client:
    """The few API calls the plugin makes, on the current kubeconfig."""

    def __init__(self, kubeconfig: str | None, context: str | None, namespace: str | None) -> None:
        # Imported here: the kubernetes client takes about a second to import, which `--help`
        # and the table renderers (unit-tested without a cluster) need not pay.
        from kubernetes import client, config

        try:
            config.load_kube_config(config_file=kubeconfig, context=context)  # type: ignore[no-untyped-call]
            if namespace is None:
                contexts, active = config.list_kube_config_contexts(  # type: ignore[no-untyped-call]
                    config_file=kubeconfig
                )
                chosen = next((c for c in contexts if c["name"] == context), active)
                namespace = (chosen or {}).get("context", {}).get("namespace") or "default"
        except config.ConfigException as e:
            raise PluginError(f"cannot load kubeconfig: {e}") from e
        self.namespace: str = namespace
        self.api = client.CustomObjectsApi()

    def get(self, name: str) -> dict[str, Any]:
        """The ModelDeployment object."""
        obj: dict[str, Any] = self._call(
            name,
            lambda: self.api.get_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, name
            ),
        )
        return obj

    def merge_patch(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        """JSON merge patch of the ModelDeployment."""
        obj: dict[str, Any] = self._call(
            name,
            lambda: self.api.patch_namespaced_custom_object(
                GROUP,
                VERSION,
                self.namespace,
                PLURAL,
                name,
                body,
                _content_type="application/merge-patch+json",
            ),
        )
        return obj

    def _call(self, name: str, fn: Any) -> Any:
        from kubernetes.client.exceptions import ApiException

        try:
            return fn()
        except ApiException as e:
            if e.status == 404:
                raise PluginError(
                    f'modeldeployment "{name}" not found in namespace "{self.namespace}"'
                ) from e
            try:
                message = json.loads(e.body or "{}").get("message") or e.reason
            except ValueError:
                message = e.reason
            raise PluginError(f"API error {e.status}: {message}") from e


def _global_options(parser: argparse.ArgumentParser, default: Any) -> None:
    parser.add_argument(
        "-n", "--namespace", default=default, help="namespace (default: the context's)"
    )
    parser.add_argument(
        "--kubeconfig", default=default, help="kubeconfig file (default: $KUBECONFIG or ~/.kube)"
    )
    parser.add_argument(
        "--context", default=default, help="kubeconfig context (default: the current one)"
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kubectl roost", description="Look at and steer roost ModelDeployment rollouts."
    )
    _global_options(parser, None)
    # kubectl users put -n anywhere (`kubectl roost status wine -n demo`): every subcommand
    # takes the global options too; SUPPRESS keeps a value given before the subcommand.
    common = argparse.ArgumentParser(add_help=False)
    _global_options(common, argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    helps = {
        "status": "revisions, weights, conditions and the last analysis",
        "history": "past rollouts and their outcomes",
        "promote": "skip the remaining steps and gates: promote once at full scale",
        "abort": "roll the canary back now",
        "retry": "roll out the failed revision again",
        "pause": "freeze the rollout where it is (spec.paused=true)",
        "resume": "let a paused rollout go on (spec.paused=false)",
        "watch": "record the rollout timeline (weights, gate values) to a file",
    }
    for command, text in helps.items():
        p = sub.add_parser(command, help=text, description=text, parents=[common])
        p.add_argument("name", metavar="NAME", help="ModelDeployment name")
        if command == "history":
            p.add_argument("--plot", metavar="OUT.png", type=Path, help="also draw a timeline")
            p.add_argument(
                "--timeline",
                metavar="FILE",
                type=Path,
                help="draw weights and gate values recorded by `kubectl roost watch --record`",
            )
        if command == "watch":
            p.add_argument("--record", metavar="FILE", type=Path, required=True)
            p.add_argument("--interval", type=float, default=1.0, help="seconds between polls")
            p.add_argument("--duration", type=float, default=600.0, help="seconds to record")
    return parser


def _watch(kube: Client, name: str, record: Path, interval: float, duration: float) -> str:
    """Poll the object every `interval` s for at most `duration` s, appending samples."""
    import time

    from roost_operator import timeline

    if interval <= 0 or duration <= 0:
        raise PluginError("--interval and --duration must be positive")
    deadline = time.monotonic() + duration
    count = 0
    try:
        while time.monotonic() < deadline:
            timeline.append(record, timeline.sample(kube.get(name), datetime.now(UTC)))
            count += 1
            time.sleep(interval)
    except KeyboardInterrupt:
        pass
    return f"recorded {count} samples to {record}"


def run(argv: Sequence[str] | None = None) -> str:
    """Run one command and return what to print; raises PluginError on failure."""
    args = _parser().parse_args(argv)
    kube = Client(args.kubeconfig, args.context, args.namespace)
    name: str = args.name
    if args.command == "status":
        return render_status(kube.get(name))
    if args.command == "history":
        md = kube.get(name)
        out = render_history(md)
        if args.plot is not None and args.timeline is not None:
            from roost_operator import timeline

            timeline.plot(timeline.load(args.timeline), args.plot, title=name)
            out += f"\nTimeline written to {args.plot}"
        elif args.plot is not None:
            from roost_operator.plot import plot_history

            plot_history(_get(md, "status", "history") or [], args.plot, title=name)
            out += f"\nTimeline written to {args.plot}"
        return out
    if args.command == "watch":
        return _watch(kube, name, args.record, args.interval, args.duration)
    if args.command in REQUEST_KINDS:
        token = request_token()
        kube.merge_patch(name, {"metadata": {"annotations": {f"roost.dev/{args.command}": token}}})
        return f'{args.command} requested for modeldeployment "{name}" (token {token})'
    paused = args.command == "pause"
    kube.merge_patch(name, {"spec": {"paused": paused}})
    return f'modeldeployment "{name}" {"paused" if paused else "resumed"}'


def main(argv: Sequence[str] | None = None) -> int:
    """Console-script entry point."""
    try:
        print(run(argv))
    except PluginError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
