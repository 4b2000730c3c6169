"""Local Kubernetes control plane (etcd, kube-apiserver, controllers, kwok) and a pod runner.

Test and demo harness only: it is not part of the roost product.

Command line (``make cluster-up`` / ``make cluster-down``)::

    python -m roost_devcluster up [--kwok-ready-all]   # prints: export KUBECONFIG=...
    python -m roost_devcluster status                  # health and memory per component
    python -m roost_devcluster down                    # stops everything, removes the state dir
    python -m roost_devcluster restart kube-apiserver  # a component restarted, state kept
    python -m roost_devcluster freeze etcd --seconds 5 # SIGSTOP/SIGCONT: unreachable a while

State, logs and the admin kubeconfig live in ``~/.cache/roost/devcluster`` (override with
``ROOST_DEVCLUSTER_DIR`` or ``--state-dir``); binaries come from ``hack/k8s/build.sh``'s cache.

Modules:
- ``controlplane``: ``up``/``down``/``status`` (certificates from ``pki``, processes via
  ``procs``, kwok stages from ``kwokstages``); two kwok nodes whose podCIDRs are in 127.0.0.0/8.
- ``faults``: restart, stop, freeze a component; compact etcd (watches then get 410 Gone).
- ``podrunner``: runs pods labelled ``roost.dev/serving=true`` or
  ``app.kubernetes.io/component=operator`` as local processes (``podenv``, ``probes``,
  ``container``); ``read_container_log`` reads their output.
- ``prometheus``: Debian's Prometheus discovering serving pods (``sdbridge``).
- ``traffic``: bounded V2 inference traffic to a ModelDeployment's Ready pods.
- ``waiting``: ``wait_for`` and pod predicates for tests; ``kubeapi``: a small REST client.
The pytest fixtures built on these are in ``tests/e2e/conftest.py``.
"""
