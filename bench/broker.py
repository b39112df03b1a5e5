"""What the benches do to the local broker besides reading and writing: deleting a run's topics."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from monitor.settings import Settings
from streams.kafka_io import client_options


async def delete_topics(settings: Settings, matches: Callable[[str], bool], *, timeout: float = 20.0) -> list[str]:
    """Delete every topic whose name `matches`; the names deleted. Raises what the broker raises: a bench that
    cleans up on its way out decides whether that matters (its topics are on a local broker with a retention)."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(**client_options(settings), request_timeout_ms=int(timeout * 1000))
    try:
        await asyncio.wait_for(admin.start(), timeout)
        names = [t for t in await admin.list_topics() if matches(t)]
        if names:
            await admin.delete_topics(names, timeout_ms=int(timeout * 1000))
        return names
    finally:
        await admin.close()
