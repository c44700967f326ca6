"""Certificates for the local control plane, made with the openssl command line.

One throw-away CA signs the API server's serving certificate and an admin client
certificate in ``system:masters``; a separate key pair signs service-account
tokens. ECDSA P-256 throughout: it is accepted by every component and is much
faster to generate than RSA on a small CI machine.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Pki", "make_pki"]

# The first address of the service range (--service-cluster-ip-range in
# local.py) is the ClusterIP of the `kubernetes` Service; in-cluster clients
# connect to it, so the serving certificate must name it as upstream's does.
# Nothing here dials a ClusterIP (no kube-proxy, no endpoints), but the range is
# inside 127.0.0.0/8 all the same, so that no address the cluster hands out leaves
# the machine; the API server accepts a loopback service range.
SERVICE_CLUSTER_IP_RANGE = "127.96.0.0/16"
KUBERNETES_SERVICE_IP = "127.96.0.1"

_API_SERVER_DNS_NAMES = (
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
)
_DAYS = "3650"


@dataclass(frozen=True)
class Pki:
    """Paths of the files that :func:`make_pki` wrote."""

    ca_cert: Path
    ca_key: Path
    serving_cert: Path
    serving_key: Path
    admin_cert: Path
    admin_key: Path
    front_proxy_cert: Path
    front_proxy_key: Path
    service_account_key: Path
    service_account_pub: Path


def _openssl(*args: str, cwd: Path) -> None:
    done = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed:\n{done.stderr.strip()}")


def _key(path: Path) -> None:
    _openssl(
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-out",
        path.name,
        cwd=path.parent,
    )
    path.chmod(0o600)


def _signed_cert(directory: Path, name: str, subject: str, extensions: str) -> None:
    """Write ``name.key`` and ``name.crt`` signed by ``ca.crt`` in ``directory``."""
    _key(directory / f"{name}.key")
    (directory / f"{name}.ext").write_text(extensions)
    _openssl("req", "-new", "-key", f"{name}.key", "-subj", subject, "-out", f"{name}.csr", cwd=directory)
    _openssl(
        "x509",
        "-req",
        "-in",
        f"{name}.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        _DAYS,
        "-sha256",
        "-extfile",
        f"{name}.ext",
        "-out",
        f"{name}.crt",
        cwd=directory,
    )


def make_pki(directory: Path) -> Pki:
    """Create a CA, the API server's serving cert, admin and front-proxy client certs, a service-account key pair."""
    if shutil.which("openssl") is None:
        raise RuntimeError("openssl is needed to create the e2e cluster's certificates (apt-get install openssl)")
    directory.mkdir(parents=True, exist_ok=True)
    _key(directory / "ca.key")
    _openssl(
        "req",
        "-x509",
        "-new",
        "-key",
        "ca.key",
        "-subj",
        "/CN=ebbtide-e2e-ca",
        "-days",
        _DAYS,
        "-sha256",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
        "-out",
        "ca.crt",
        cwd=directory,
    )
    alt_names = ",".join([f"IP:127.0.0.1,IP:{KUBERNETES_SERVICE_IP}"] + [f"DNS:{n}" for n in _API_SERVER_DNS_NAMES])
    _signed_cert(
        directory,
        "apiserver",
        "/CN=kube-apiserver",
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
        f"extendedKeyUsage=serverAuth\nsubjectAltName={alt_names}\n",
    )
    # O=system:masters is the group RBAC lets do anything: the tests, the
    # controller-manager, the scheduler and kwok all use this one identity.
    _signed_cert(
        directory,
        "admin",
        "/O=system:masters/CN=ebbtide-e2e-admin",
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n",
    )
    # The aggregation layer's client identity (kubeadm's front-proxy-client).
    # With it configured, components that delegate authentication find the
    # request-header CA they look for instead of logging an error every second.
    _signed_cert(
        directory,
        "front-proxy-client",
        "/CN=front-proxy-client",
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n",
    )
    _key(directory / "sa.key")
    _openssl("pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=directory)
    return Pki(
        ca_cert=directory / "ca.crt",
        ca_key=directory / "ca.key",
        serving_cert=directory / "apiserver.crt",
        serving_key=directory / "apiserver.key",
        admin_cert=directory / "admin.crt",
        admin_key=directory / "admin.key",
        front_proxy_cert=directory / "front-proxy-client.crt",
        front_proxy_key=directory / "front-proxy-client.key",
        service_account_key=directory / "sa.key",
        service_account_pub=directory / "sa.pub",
    )
