"""Acting as a ServiceAccount: a bound token from the TokenRequest API, as a client or a kubeconfig."""

from __future__ import annotations

from pathlib import Path

import yaml
from kubernetes import client

from controller.kube.client import request_json
from e2e.cluster import K8sCluster

__all__ = ["service_account_token", "token_client", "token_kubeconfig"]


def service_account_token(k8s_cluster: K8sCluster, namespace: str, account: str, seconds: int = 3600) -> str:
    """A bound token of ``namespace/account`` (TokenRequest), valid for ``seconds``."""
    request = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": seconds}}
    answer = request_json(
        k8s_cluster.api_client,
        "POST",
        f"/api/v1/namespaces/{namespace}/serviceaccounts/{account}/token",
        body=request,
    )
    token: str = answer["status"]["token"]
    return token


def token_client(k8s_cluster: K8sCluster, token: str) -> client.ApiClient:
    """A client that trusts the cluster's CA and presents only ``token`` (no client certificate)."""
    admin = k8s_cluster.api_client.configuration
    configuration = client.Configuration()
    configuration.host = admin.host
    configuration.ssl_ca_cert = admin.ssl_ca_cert
    configuration.api_key = {"BearerToken": token}
    configuration.api_key_prefix = {"BearerToken": "Bearer"}
    return client.ApiClient(configuration)


def token_kubeconfig(k8s_cluster: K8sCluster, token: str, path: Path, user: str) -> Path:
    """Write a kubeconfig at ``path`` that authenticates with ``token`` only; returns ``path``."""
    admin = k8s_cluster.api_client.configuration
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "e2e", "cluster": {"server": admin.host, "certificate-authority": admin.ssl_ca_cert}}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": user, "context": {"cluster": "e2e", "user": user}}],
        "current-context": user,
    }
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    path.chmod(0o600)
    return path
