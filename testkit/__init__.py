"""Helpers shared by the tests and the benchmark: real processes on free loopback ports, and waiting for
conditions instead of for time.

- `ports`: free loopback ports, and port pairs for Redis Cluster nodes.
- `waiting`: `eventually` (async) and `eventually_sync`, a retry budget around a condition.
- `prerequisites`: `need`, which skips a test (fails it under `CI=true`) when something is missing.
- `redis_server`: one real `redis-server` (`RedisServer`, `start_redis`).
- `topologies`: a three-master Redis Cluster and a master, replica and three sentinels.
- `processes`: a server process on a free port, waited for until it answers, with CPU accounting.
- `service`: the service itself as such a process (`python app.py`, or uvicorn with workers).
- `asgi_server`: any ASGI app under uvicorn in a thread of the test process (`serve`).
- `openai_server`: a scriptable OpenAI-compatible Chat Completions upstream.

Never imported by the service, and kept out of its image (`.dockerignore`).
"""
