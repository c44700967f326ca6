"""Ebbtide's gateway: an OpenAI-compatible front door that serves on the pool's GPUs while they keep up
and sends the rest to paid providers before a request would be late."""

from gateway.app import Gateway, build_app
from gateway.config import GatewaySettings
from gateway.directory import PoolDirectory, PoolKey, PoolState
from gateway.server import BackgroundGateway, start_site

__all__ = [
    "BackgroundGateway",
    "Gateway",
    "GatewaySettings",
    "PoolDirectory",
    "PoolKey",
    "PoolState",
    "build_app",
    "start_site",
]
