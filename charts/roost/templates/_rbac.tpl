{{/* The rules the operator needs in every namespace it watches (see docs/helm.md). */}}
{{- define "roost.namespacedRules" -}}
# Watch ModelDeployments; kopf patches them for its finalizer and last-handled annotations.
- apiGroups: ["roost.dev"]
  resources: ["modeldeployments"]
  verbs: ["get", "list", "watch", "patch"]
# Conditions, rollout state and history live in status (the status subresource).
- apiGroups: ["roost.dev"]
  resources: ["modeldeployments/status"]
  verbs: ["get", "patch"]
# Children, applied server-side (an apply that creates needs "create" besides "patch") and
# pruned when a revision retires or a feature (autoscaling, PDB, route) is switched off.
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["services"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["autoscaling"]
  resources: ["horizontalpodautoscalers"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# Serving pods: readiness and crash reasons for status, pod IPs for the canary analysis.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch"]
# Events on ModelDeployments (rollout steps, promotions, rollbacks; kopf's handler events).
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- if .Values.rbac.gatewayAPI }}
# Weighted traffic split for spec.traffic.httpRoute.
- apiGroups: ["gateway.networking.k8s.io"]
  resources: ["httproutes"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
{{- end }}
{{- end }}
