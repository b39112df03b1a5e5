"""Asks a running worker for a report over its web server."""

from __future__ import annotations

import urllib.error
import urllib.parse
import urllib.request

import orjson

from cli.exceptions import CliError, WorkerUnreachable
from monitor.report import Report, ReportRequest


def fetch_report(base_url: str, request: ReportRequest, *, timeout: float = 10.0) -> Report:
    query = urllib.parse.urlencode(request.model_dump(exclude_none=True))
    url = f"{base_url.rstrip('/')}/pmon/report/?{query}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return Report.model_validate(orjson.loads(response.read()))
    except urllib.error.HTTPError as exc:
        body = orjson.loads(exc.read() or b"{}")
        if exc.code == 404 and "known" in body:
            known = ", ".join(body["known"]) or "none yet"
            raise CliError(f"{body['error']} — the worker knows: {known}; pass one of them with --initiative") from None
        raise CliError(f"the worker at {base_url} refused the request: {body.get('error', exc.reason)}") from None
    except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
        reason = getattr(exc, "reason", exc)
        raise WorkerUnreachable(
            f"no worker reachable at {base_url} ({reason}) — start one with `pmon worker`, pass --worker-url, "
            "or run over a file with --events FILE"
        ) from None
