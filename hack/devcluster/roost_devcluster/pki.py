"""Certificates for the dev cluster, made with the ``openssl`` command.

One CA signs the apiserver's serving certificate (SANs 127.0.0.1, localhost and the in-cluster
``kubernetes.default.svc`` names) and one client certificate per identity. Kubernetes reads
the user from the CN and the groups from the O fields, so the identities below are the ones
kubeadm uses and the bootstrap RBAC roles already grant. EC P-256 keys keep generation in
milliseconds, which matters because every ``up`` starts from a fresh state directory.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

_DAYS = "3650"
_APISERVER_SANS = (
    "IP:127.0.0.1,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,"
    "DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
)


@dataclass(frozen=True)
class ClientCert:
    """A client certificate and its key."""

    cert: Path
    key: Path


# name -> (CN, O): admin is cluster-admin through system:masters; the controller manager and
# the scheduler get the identities their bootstrap ClusterRoles bind.
CLIENTS: dict[str, tuple[str, str | None]] = {
    "admin": ("roost-admin", "system:masters"),
    "kube-controller-manager": ("system:kube-controller-manager", None),
    "kube-scheduler": ("system:kube-scheduler", None),
}


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def _ec_key(path: Path) -> None:
    _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(path))
    path.chmod(0o600)


def _sign(pki: Path, name: str, subject: str, extensions: str) -> None:
    key, csr, cert, ext = (pki / f"{name}{s}" for s in (".key", ".csr", ".crt", ".ext"))
    _ec_key(key)
    _openssl("req", "-new", "-key", str(key), "-subj", subject, "-out", str(csr))
    ext.write_text(extensions)
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(pki / "ca.crt"), "-CAkey",
        str(pki / "ca.key"), "-CAcreateserial", "-days", _DAYS, "-sha256",
        "-extfile", str(ext), "-out", str(cert),
    )  # fmt: skip
    csr.unlink()
    ext.unlink()


def generate(pki: Path) -> None:
    """Write ca.{crt,key}, apiserver.{crt,key}, <client>.{crt,key} and sa.{key,pub} under pki."""
    pki.mkdir(parents=True, exist_ok=True)
    _ec_key(pki / "ca.key")
    _openssl(
        "req", "-x509", "-new", "-key", str(pki / "ca.key"), "-subj", "/CN=roost-devcluster-ca",
        "-days", _DAYS, "-sha256", "-out", str(pki / "ca.crt"),
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
    )  # fmt: skip
    _sign(
        pki,
        "apiserver",
        "/CN=kube-apiserver",
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
        f"extendedKeyUsage=serverAuth\nsubjectAltName={_APISERVER_SANS}\n",
    )
    for name, (cn, org) in CLIENTS.items():
        subject = f"/O={org}/CN={cn}" if org else f"/CN={cn}"
        _sign(
            pki,
            name,
            subject,
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
            "extendedKeyUsage=clientAuth\n",
        )
    # Service-account tokens are signed with an RSA key: every client library verifies RS256.
    _openssl("genrsa", "-out", str(pki / "sa.key"), "2048")
    _openssl("rsa", "-in", str(pki / "sa.key"), "-pubout", "-out", str(pki / "sa.pub"))


def client(pki: Path, name: str) -> ClientCert:
    """The certificate pair of one client identity from ``CLIENTS``."""
    return ClientCert(cert=pki / f"{name}.crt", key=pki / f"{name}.key")
