"""Clients configured from the environment, for the framework hooks that
load a function by path and give it no way to pass settings:

- `REWARD_WORKER_URLS`: comma-separated replica URLs (default http://127.0.0.1:8000)
- `REWARD_WORKER_API_KEY`: bearer key, if the server needs one
- `REWARD_WORKER_TIMEOUT`: total deadline per call in seconds (default 120)
- `REWARD_WORKER_MAX_RETRIES`: attempts after the first (default 8)
"""

from __future__ import annotations

import os
import threading
from typing import Optional

from .client import AsyncRewardClient, RewardClient

_lock = threading.Lock()
_sync: dict[tuple, RewardClient] = {}


def _settings(urls: Optional[str]) -> tuple:
    raw = urls or os.environ.get("REWARD_WORKER_URLS") or "http://127.0.0.1:8000"
    return (
        tuple(u.strip() for u in raw.split(",") if u.strip()),
        os.environ.get("REWARD_WORKER_API_KEY") or None,
        float(os.environ.get("REWARD_WORKER_TIMEOUT", "120")),
        int(os.environ.get("REWARD_WORKER_MAX_RETRIES", "8")),
    )


def client_from_env(urls: Optional[str] = None) -> RewardClient:
    """One shared `RewardClient` per setting (made on first use, reused after)."""
    key = _settings(urls)
    with _lock:
        if key not in _sync:
            u, api_key, timeout, retries = key
            _sync[key] = RewardClient(list(u), api_key=api_key, timeout=timeout, max_retries=retries)
        return _sync[key]


def async_client_from_env(urls: Optional[str] = None) -> AsyncRewardClient:
    """A new `AsyncRewardClient` (async clients belong to one event loop, so they are not shared)."""
    u, api_key, timeout, retries = _settings(urls)
    return AsyncRewardClient(list(u), api_key=api_key, timeout=timeout, max_retries=retries)
