"""The conversation record: the SQL system of record behind the Redis hot tier (issue #15).

`schema` (the tables), `database` (the engine and migrations under a lock), `store` (what the service
reads and writes), `outbox` (the Redis Stream every stored turn is appended to, which the archiver
drains into the store).
"""
