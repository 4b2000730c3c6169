"""roost operator: reconciles ModelDeployments into serving pods and runs canary rollouts."""

__version__ = "0.1.0"
