"""Reading pods from the API: which ones a stand-in replica should serve, and at what address."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from kubernetes import client

__all__ = ["LOOPBACK_NETWORK", "PodIPError", "PodView", "deployment_selector", "is_serving", "loopback_ip"]

LOOPBACK_NETWORK = ipaddress.IPv4Network("127.0.0.0/8")
"""The only addresses e2e tests may send traffic to."""


class PodIPError(ValueError):
    """A followed pod's IP is outside 127.0.0.0/8: a replica there would send test traffic off the machine."""


def loopback_ip(ip: str | None, pod: str) -> str:
    """Return ``ip`` if it is an IPv4 address inside 127.0.0.0/8; raise :class:`PodIPError` naming the pod otherwise."""
    try:
        address = ipaddress.ip_address(ip or "")
    except ValueError:
        raise PodIPError(f"pod {pod} has no valid pod IP ({ip!r})") from None
    if address.version != 4 or address not in LOOPBACK_NETWORK:
        raise PodIPError(
            f"pod {pod} has IP {ip}, outside {LOOPBACK_NETWORK}: e2e tests may send traffic only to loopback. "
            "Start kwok with a pod CIDR inside 127.0.0.0/8 (e2e/cluster/local.py does), and give fake nodes "
            "no spec.podCIDR outside it"
        )
    return str(address)


def is_serving(pod: client.V1Pod) -> bool:
    """Whether a pod should have a replica: it has an IP, its Ready condition is True and it is not terminating."""
    status = pod.status
    if pod.metadata is None or pod.metadata.deletion_timestamp is not None or status is None or not status.pod_ip:
        return False
    return any(c.type == "Ready" and c.status == "True" for c in status.conditions or [])


def deployment_selector(api_client: client.ApiClient, namespace: str, name: str) -> str:
    """The label selector (``a=b,c in (d,e)``) of Deployment ``namespace/name``; a clear error if it is missing."""
    try:
        deployment = client.AppsV1Api(api_client).read_namespaced_deployment(name, namespace)
    except client.ApiException as err:
        if err.status == 404:
            raise LookupError(f"Deployment {namespace}/{name} not found: create it before following its pods") from None
        raise
    selector = deployment.spec.selector
    terms = [f"{k}={v}" for k, v in sorted((selector.match_labels or {}).items())]
    for expr in selector.match_expressions or []:
        values = ",".join(expr.values or [])
        terms.append(
            {"In": f"{expr.key} in ({values})", "NotIn": f"{expr.key} notin ({values})", "Exists": expr.key}.get(
                expr.operator, f"!{expr.key}"
            )
        )
    if not terms:
        raise ValueError(f"Deployment {namespace}/{name} has an empty selector")
    return ",".join(terms)


@dataclass(frozen=True)
class PodView:
    """What the follower needs of one pod."""

    name: str
    uid: str
    ip: str | None
    serving: bool
    """See :func:`is_serving`."""

    @classmethod
    def of(cls, pod: client.V1Pod) -> PodView:
        """Read a pod as the API returned it."""
        meta = pod.metadata or client.V1ObjectMeta()
        ip = pod.status.pod_ip if pod.status is not None else None
        return cls(name=str(meta.name), uid=str(meta.uid), ip=ip, serving=is_serving(pod))
