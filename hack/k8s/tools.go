//go:build tools

// Package tools pins the commands that hack/k8s/build.sh builds, so `go mod tidy` keeps
// their whole module graph in go.sum.
package tools

import (
	_ "go.etcd.io/etcd/server/v3"
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "sigs.k8s.io/gateway-api/apis/v1"
)
