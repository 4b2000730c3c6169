{{/* The rules the operator needs in every namespace it watches: exactly the API calls
roost-operator makes (operator/roost_operator/handlers.py, applier.py, kopf). docs/helm.md has
one row per rule naming the operation that needs it. */}}
{{- define "roost.namespacedRules" -}}
# kopf lists and watches ModelDeployments and patches their metadata (finalizer, annotations);
# a status write that lost a race (409) re-reads the object to plan again on fresh state.
- apiGroups: ["roost.dev"]
  resources: ["modeldeployments"]
  verbs: ["get", "list", "watch", "patch"]
# Conditions, rollout state and history: merge patches of the status subresource.
- apiGroups: ["roost.dev"]
  resources: ["modeldeployments/status"]
  verbs: ["patch"]
# Children are read from kopf indexes (list + watch), written by server-side apply (an apply
# that creates an object is also authorised as "create") and pruned when they retire.
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["list", "watch", "create", "patch", "delete"]
# Replica split between stable and canary Deployments.
- apiGroups: ["apps"]
  resources: ["deployments/scale"]
  verbs: ["patch"]
- apiGroups: [""]
  resources: ["services"]
  verbs: ["list", "watch", "create", "patch", "delete"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["list", "watch", "create", "patch", "delete"]
- apiGroups: ["autoscaling"]
  resources: ["horizontalpodautoscalers"]
  verbs: ["list", "watch", "create", "patch", "delete"]
# Serving pods: readiness and crash reasons for status, pod IPs for the canary analysis.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "watch"]
# The Secret <md>-runtime: created once with the serving pods' runtime token, read back by name
# to push runtime configuration (roost_operator/runtime_push.py); never updated or deleted.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "create"]
# Events on ModelDeployments (rollout steps, promotions, rollbacks, kopf warnings).
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- if .Values.rbac.registryCredentials }}
# spec.model.registry.credentials: the MLflow token or basic-auth pair, read by name (GET only;
# the operator uses a Secret only if its roost.dev/registry annotation names the tracking URI).
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get"]
{{- end }}
{{- if .Values.rbac.gatewayAPI }}
# spec.traffic.httpRoute / grpcRoute: read, apply and prune the weighted routes (no index, so
# no list/watch).
- apiGroups: ["gateway.networking.k8s.io"]
  resources: ["httproutes", "grpcroutes"]
  verbs: ["get", "create", "patch", "delete"]
{{- end }}
{{- end }}
