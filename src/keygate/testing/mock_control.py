"""The mock's control endpoints, ``/_mock/*``: how a user in another process (the benchmark)
reads the mock's records and counters and scripts its behaviour over HTTP.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from keygate.testing.mock_wire import _json, _parse_json

if TYPE_CHECKING:
    from keygate.testing.mock_upstream import MockUpstream


async def control(mock: MockUpstream, request: web.BaseRequest, path: str) -> web.Response:
    """/_mock/* endpoints so out-of-process users (the benchmark) can script the mock."""
    method = request.method
    if path == "/_mock/requests" and method == "GET":
        return _json([r.to_dict() for r in mock.records()])
    if path == "/_mock/stats" and method == "GET":
        return _json(
            {
                "inflight": mock.inflight,
                "peak_inflight": mock.peak_inflight,
                "count": mock.count(),
            }
        )
    if path == "/_mock/reset" and method == "POST":
        mock.reset()
        return _json({"ok": True})
    if path == "/_mock/behavior" and method == "POST":
        data = _parse_json(await request.read())
        if data is None:
            return _json({"error": "body must be a JSON object"}, 400)
        key = data.pop("key", None)
        try:
            if "times" in data:
                mock.push(key, times=int(data.pop("times")), **data)
            else:
                mock.set_behavior(key, **data)
        except (TypeError, ValueError) as exc:
            return _json({"error": str(exc)}, 400)
        return _json({"ok": True})
    return _json({"error": f"unknown control endpoint {method} {path}"}, 404)
