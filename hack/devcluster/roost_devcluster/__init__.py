"""Local Kubernetes control plane (etcd, kube-apiserver, controllers, kwok) and a pod runner.

Test and demo harness only: it is not part of the roost product.
"""
