"""The worker's Alertmanager push: POST a JSON list of alerts to `<PMON_ALERTMANAGER_URL>/api/v2/alerts`.

Only the HTTP transport lives here. The alerts are the core's (`monitor.alertmanager`), and so are
the retries, dead letters and monitoring_degraded of a failed push (`monitor.emitter`): a push that
fails raises, and the emitter retries it like any sink write. One aiohttp session per worker, opened
on first use (inside the running event loop) and closed when stage 2 stops.
"""

from __future__ import annotations

import aiohttp

from streams.exceptions import StreamsError


class AlertmanagerRejected(StreamsError):
    """Alertmanager answered a push with an error status."""


class AlertmanagerClient:
    def __init__(self, url: str, *, timeout_seconds: float) -> None:
        self.endpoint = f"{url.rstrip('/')}/api/v2/alerts"
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self._session: aiohttp.ClientSession | None = None

    async def __call__(self, body: bytes) -> None:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        async with self._session.post(
            self.endpoint, data=body, headers={"Content-Type": "application/json"}
        ) as response:
            if response.status >= 300:
                detail = (await response.text())[:500]
                raise AlertmanagerRejected(f"{self.endpoint} answered {response.status}: {detail.strip()}")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
