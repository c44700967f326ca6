"""The gateway's settings and its static configuration: pools from GPUPool files, addresses, keys.

Pools are the same GPUPool YAML the controller reads (validated by controller/validate.py), never a
second format. Without a cluster, `--endpoints POOL=HOST:PORT,...` says where each pool's replicas
listen, and provider keys come from `apiKeyEnv` / `apiKeyFile`.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from controller.defaults import GATEWAY_LISTEN, TICK_SECONDS
from controller.validate import load_pools
from policies.spec import GPUPool

__all__ = [
    "ConfigError",
    "GatewaySettings",
    "load_client_keys",
    "load_static_pools",
    "parse_endpoints",
    "parse_listen",
    "provider_keys",
]


class ConfigError(ValueError):
    """A configuration problem, with a message naming what is wrong and where."""


@dataclass(frozen=True, slots=True)
class GatewaySettings:
    """How the gateway serves; every field has the default the CLI shows."""

    host: str = GATEWAY_LISTEN.rsplit(":", 1)[0]
    """Address to listen on."""
    port: int = int(GATEWAY_LISTEN.rsplit(":", 1)[1])
    """Port to listen on."""
    max_body_bytes: int = 16 * 1024 * 1024
    """Largest request body accepted; a larger one is answered 413."""
    max_held: int = 256
    """Requests held per pool at zero Ready replicas; beyond, they go to the fallback (or get 503)."""
    max_hold_seconds: float = 600.0
    """Longest a request is held (when no fallback can take it; otherwise its objective bounds the hold)."""
    scrape_interval_seconds: float = 1.0
    """How often each endpoint's /metrics is read for vLLM's queue gauges."""
    controller_tick_seconds: float = TICK_SECONDS
    """The controller's reconcile period: a scale-up from zero starts within one tick of a held request."""
    late_priority: int = 1
    """vLLM `priority` sent for the late lane (lower is served first; the normal lane sends none, i.e. 0)."""
    upstream_connections: int = 4096
    """Most concurrent upstream connections (aiohttp's default of 100 would queue requests in the gateway)."""
    check_priority: bool = True
    """Check once per new endpoint that vLLM accepts `priority` (a one-token request)."""
    keepalive_seconds: float = 10.0
    """A streaming request held this long gets its stream started and an SSE comment this often (0: never)."""
    shutdown_grace_seconds: float = 30.0
    """On SIGTERM, /readyz turns 503 and requests under way get this long to finish (streams are long)."""
    access_log: bool = False
    """Log one line per generation request (gateway/access.py): pool, route, provider, status, seconds."""


def parse_listen(text: str) -> tuple[str, int]:
    """HOST:PORT (IPv6 in brackets) as (host, port)."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise ConfigError(f"--listen {text!r}: expected HOST:PORT, e.g. 0.0.0.0:8080")
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigError(f"--listen {text!r}: port {port_text!r} is not a number") from None
    if not 0 <= port <= 65535:
        raise ConfigError(f"--listen {text!r}: port {port} is outside 0-65535")
    return host.strip("[]"), port


def _address(text: str, where: str) -> str:
    host, sep, port_text = text.strip().rpartition(":")
    if not sep or not host:
        raise ConfigError(f"{where}: {text!r} is not HOST:PORT")
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigError(f"{where}: {text!r}: port {port_text!r} is not a number") from None
    if not 1 <= port <= 65535:
        raise ConfigError(f"{where}: {text!r}: port {port} is outside 1-65535")
    bare = host.strip("[]")
    try:
        ip = ipaddress.ip_address(bare)
    except ValueError:
        return f"{bare}:{port}"
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


def parse_endpoints(values: Iterable[str]) -> dict[str, list[str]]:
    """`--endpoints POOL=HOST:PORT,...` (repeatable; POOL is a name or namespace/name) as {pool: [address]}."""
    out: dict[str, list[str]] = {}
    for value in values:
        pool, sep, rest = value.partition("=")
        pool = pool.strip()
        if not sep or not pool:
            raise ConfigError(f"--endpoints {value!r}: expected POOL=HOST:PORT[,HOST:PORT...]")
        addresses = [_address(a, f"--endpoints {pool}") for a in rest.split(",") if a.strip()]
        out.setdefault(pool, []).extend(addresses)
    return out


def load_static_pools(files: Sequence[Path]) -> list[GPUPool]:
    """Every GPUPool in the files, validated; all problems of all files in one ConfigError."""
    pools: list[GPUPool] = []
    problems: list[str] = []
    for path in files:
        found, wrong = load_pools(path)
        pools.extend(found)
        problems.extend(f"{path}: {p}" for p in wrong)
    seen: set[tuple[str, str]] = set()
    for pool in pools:
        key = (pool.metadata.namespace, pool.metadata.name)
        if key in seen:
            problems.append(f"pool {key[0]}/{key[1]} is defined twice")
        seen.add(key)
    if problems:
        raise ConfigError("\n".join(problems))
    return pools


def provider_keys(
    pool: GPUPool,
    *,
    environ: Mapping[str, str] | None = None,
    read_secret: Callable[[str, str, str], str] | None = None,
) -> dict[str, str | None]:
    """Each provider's API key from its `apiKeyEnv`, `apiKeyFile` or (with `read_secret(namespace, name,
    key)`, cluster mode) `apiKeySecretRef`; None for a provider that needs none. Raises ConfigError."""
    env = os.environ if environ is None else environ
    keys: dict[str, str | None] = {}
    where = f"pool {pool.metadata.namespace}/{pool.metadata.name}"
    for provider in pool.spec.fallback.providers:
        name = provider.name
        if provider.api_key_env is not None:
            value = env.get(provider.api_key_env)
            if not value:
                raise ConfigError(f"{where}: provider {name!r}: environment variable {provider.api_key_env} is not set")
            keys[name] = value.strip()
        elif provider.api_key_file is not None:
            try:
                keys[name] = Path(provider.api_key_file).read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as err:
                raise ConfigError(f"{where}: provider {name!r}: cannot read apiKeyFile: {err}") from None
        elif provider.api_key_secret_ref is not None:
            ref = provider.api_key_secret_ref
            if read_secret is None:
                raise ConfigError(
                    f"{where}: provider {name!r}: apiKeySecretRef needs cluster mode (--kubeconfig or in-cluster);"
                    " without a cluster use apiKeyEnv or apiKeyFile"
                )
            keys[name] = read_secret(pool.metadata.namespace, ref.name, ref.key).strip()
        else:
            keys[name] = None
    return keys


def load_client_keys(path: Path) -> list[str]:
    """Client keys from a file: one per line; blank lines and lines starting with # are skipped."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"--api-keys-file {path}: cannot read: {err}") from None
    keys = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not keys:
        raise ConfigError(f"--api-keys-file {path}: holds no key")
    return keys
