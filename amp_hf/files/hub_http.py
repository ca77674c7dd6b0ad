"""Timeouts for huggingface_hub's HTTP client, which sets none by default: a Hub (or proxy) that accepts the
connection and never answers would hang a download or a push forever."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

# Every request gets this long to connect and between bytes; with huggingface_hub's retries a silent endpoint
# fails in under a minute. (amp_hf.cli.hub spells the same number so `--help` loads no Hub client.)
DEFAULT_TIMEOUT = 10.0


@contextlib.contextmanager
def http_timeouts(seconds: float = DEFAULT_TIMEOUT) -> Iterator[None]:
    """Give every huggingface_hub request inside the block ``seconds`` to connect and between bytes."""
    import httpx2
    from huggingface_hub.utils import _http as hub_http
    from huggingface_hub.utils import set_client_factory

    previous = getattr(hub_http, "_GLOBAL_CLIENT_FACTORY", hub_http.default_client_factory)

    def bound(request: httpx2.Request) -> None:
        # HfApi passes timeout=None on many calls, which overrides a client default; fill in what is unset
        timeouts = dict(request.extensions.get("timeout") or {})
        for phase in ("connect", "read", "write", "pool"):
            if timeouts.get(phase) is None:
                timeouts[phase] = seconds
        request.extensions["timeout"] = timeouts

    def with_timeouts():
        client = previous()
        client.timeout = httpx2.Timeout(seconds)
        client.event_hooks = {**client.event_hooks, "request": [*client.event_hooks.get("request", []), bound]}
        return client

    set_client_factory(with_timeouts)
    try:
        yield
    finally:
        set_client_factory(previous)
