"""Connecting to the API server, and raw JSON requests that bypass the generated models.

The official client (37.x) validates bodies and responses through pydantic models and serialises datetimes
with ``isoformat()``, which drops the fraction when the microseconds are 0 and so breaks MicroTime fields
(Lease renewTime, Event eventTime). The daemon therefore sends dict bodies whose times are strings it
formatted itself, and reads responses as plain JSON: :func:`request_json` does both while still using the
client's configuration (TLS, token refresh, proxies). It is synchronous; call it through
``asyncio.to_thread``.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Mapping
from typing import Any

import yaml
from kubernetes import client, config
from kubernetes.client import ApiClient, ApiException
from kubernetes.config.config_exception import ConfigException

__all__ = [
    "JSON_PATCH",
    "MERGE_PATCH",
    "STRATEGIC_MERGE_PATCH",
    "ApiClient",
    "ApiException",
    "KubeConfigError",
    "api_client",
    "api_error_message",
    "format_micro_time",
    "format_time",
    "request_json",
]

MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"

DEFAULT_TIMEOUT = 10.0
"""Seconds for a request that names no timeout: without one a dead TCP connection hangs forever."""


class KubeConfigError(ValueError):
    """No usable cluster configuration; the message says which file or setting is wrong."""


def api_client(kubeconfig: str | None) -> ApiClient:
    """A client for the cluster in ``kubeconfig``, or the in-cluster ServiceAccount's when None.

    Raises :class:`KubeConfigError` with a message naming the problem (missing file, bad YAML, no current
    context, not running in a pod).
    """
    configuration = client.Configuration()
    if kubeconfig is None:
        if not os.environ.get("KUBERNETES_SERVICE_HOST"):
            raise KubeConfigError(
                "no --kubeconfig given and not running in a pod (KUBERNETES_SERVICE_HOST is not set): "
                "pass --kubeconfig PATH to run outside the cluster"
            )
        try:
            config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        except ConfigException as e:
            raise KubeConfigError(f"in-cluster configuration: {e}") from e
        return ApiClient(configuration)
    if not os.path.isfile(kubeconfig):
        raise KubeConfigError(f"kubeconfig {kubeconfig}: no such file")
    try:
        config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=kubeconfig, client_configuration=configuration, persist_config=False
        )
    except ConfigException as e:
        raise KubeConfigError(f"kubeconfig {kubeconfig}: {e}") from e
    except yaml.YAMLError as e:
        raise KubeConfigError(f"kubeconfig {kubeconfig}: not valid YAML: {e}") from e
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as e:
        # The loader lets shape errors (a list where a mapping belongs, a missing key) through untranslated.
        raise KubeConfigError(f"kubeconfig {kubeconfig}: {type(e).__name__}: {e}") from e
    if not configuration.host:
        raise KubeConfigError(f"kubeconfig {kubeconfig}: the current context names no server")
    return ApiClient(configuration)


def _utc(moment: dt.datetime) -> dt.datetime:
    if moment.tzinfo is None:
        # A naive time is a bug in the caller; the API server would refuse it, so say so here.
        raise ValueError(f"naive datetime {moment!r}: give a timezone-aware time")
    return moment.astimezone(dt.UTC)


def format_micro_time(moment: dt.datetime) -> str:
    """A metav1.MicroTime: UTC with exactly six fractional digits, as the API server requires."""
    return _utc(moment).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def format_time(moment: dt.datetime) -> str:
    """A metav1.Time: UTC, whole seconds."""
    return _utc(moment).strftime("%Y-%m-%dT%H:%M:%SZ")


def request_json(
    api: ApiClient,
    method: str,
    path: str,
    *,
    query: Mapping[str, str | int | bool] | None = None,
    body: object = None,
    content_type: str | None = None,
    timeout: float | tuple[float, float] = DEFAULT_TIMEOUT,
) -> Any:
    """Send one request to ``path`` (e.g. ``/api/v1/namespaces/x/events``) and return the decoded JSON.

    ``body`` must already be JSON-ready (strings for times). Raises :class:`ApiException` for a non-2xx
    answer (``.status`` holds the code) and urllib3's errors for a network failure or timeout.
    """
    headers: dict[str, str] = {"Accept": "application/json"}
    if body is not None:
        headers["Content-Type"] = content_type or "application/json"
    params = [
        (key, str(value).lower() if isinstance(value, bool) else str(value)) for key, value in (query or {}).items()
    ]
    method_, url, header_params, body_, post_params = api.param_serialize(
        method.upper(),
        path,
        query_params=params or None,
        header_params=headers,
        body=body,
        auth_settings=["BearerToken"],
    )
    response = api.call_api(method_, url, header_params, body_, post_params, _request_timeout=timeout)
    data: bytes = response.read()  # type: ignore[no-untyped-call]
    if not 200 <= response.status <= 299:
        raise ApiException.from_response(http_resp=response, body=data.decode("utf-8", "replace"), data=None)
    if not data:
        return None
    return json.loads(data)


def api_error_message(error: BaseException) -> str:
    """A short, readable account of a failed request: the status and the server's message when it sent one."""
    if isinstance(error, ApiException):
        detail = ""
        if error.body:
            try:
                status = json.loads(error.body)
                detail = str(status.get("message") or "") if isinstance(status, dict) else ""
            except (ValueError, TypeError):
                detail = str(error.body)[:200]
        text = f"{error.status} {error.reason or ''}".strip()
        return f"{text}: {detail}" if detail else text
    return f"{type(error).__name__}: {error}"
