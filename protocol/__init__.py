"""The relay wire contract v1, sans-IO: frames, codec, NDJSON framing, auth, session keys.

Nothing here imports trio, httpx or sockets; the trio runtime in ``relay_runtime`` carries
bytes and timers around these pure pieces.
"""
