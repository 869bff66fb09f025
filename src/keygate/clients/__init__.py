"""Client keys (SPEC §13): admin-issued keys, each with its own limits, model list and usage.

secret (make, hash, mask a key) · fields (validation, shared by API and CLI) · store records
in `keygate.store.clients` · registry (the in-memory table the request path reads by hash) ·
limits (the one interface that counts a client's windows) · usage (counters flushed like key
counters) · access (the three calls the request path makes).
"""
