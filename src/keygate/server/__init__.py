"""Serving: the ASGI app, the listening sockets, the life cycle around uvicorn, worker processes."""
