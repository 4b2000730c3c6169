"""The names roost's API goes by: the CRD's group, version and plural, labels, annotations.

Every module that addresses a ModelDeployment or labels a child imports them from here.
"""

GROUP = "roost.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "ModelDeployment"
PLURAL = "modeldeployments"

LABEL_MD = "roost.dev/modeldeployment"
LABEL_REVISION = "roost.dev/revision"
LABEL_SERVING = "roost.dev/serving"
TRAFFIC_CONDITION = "roost.dev/traffic"
"""Pod readiness gate of serving pods: the operator sets this condition True when the pod's
revision may take traffic, so a canary joins the Service only when the rollout says so."""

REQUEST_KINDS = ("abort", "promote", "retry")
"""Manual requests, in the order they are acted on when several arrive at once."""
REQUEST_PREFIX = "roost.dev/"
"""A manual request is the annotation ``roost.dev/<kind>`` set to a fresh token."""
