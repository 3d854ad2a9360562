"""The client ceiling: redis-py (asyncio, hiredis) publishing the same chunk events as the service, in
pipelines of 64 from one process, with orjson. It writes no replay log: it is what a client can do at
best, the figure the service's chunk throughput is compared with.

`python -m bench.publisher PORT ANSWERS CHUNKS` publishes ANSWERS x CHUNKS events, answer after answer
interleaved the way concurrent answers interleave, then prints the seconds it took. With a fourth
argument `cluster`, PORT is a node of a Redis Cluster and the events go out with sharded PubSub
(SPUBLISH on `chat:{<session>}`) through redis-py's cluster pipeline, as the service sends them there.
"""

from __future__ import annotations

import sys
import time
import uuid
from datetime import UTC, datetime

import orjson
import uvloop
from redis.asyncio import Redis, RedisCluster

PIPELINE = 64


async def publish(port: int, answers: int, chunks: int, cluster: bool = False) -> float:
    redis: Redis | RedisCluster = (
        RedisCluster(host="127.0.0.1", port=port) if cluster else Redis(host="127.0.0.1", port=port)
    )
    sessions = [f"ceiling{index}" for index in range(answers)]
    ids = [str(uuid.uuid4()) for _ in range(answers)]
    started = time.perf_counter()
    try:
        pipe = redis.pipeline(transaction=False)
        queued = 0
        for seq in range(1, chunks + 1):
            for session_id, message_id in zip(sessions, ids, strict=True):
                event = {
                    "message_id": message_id,
                    "session_id": session_id,
                    "seq": seq,
                    "timestamp": datetime.now(UTC).isoformat(),
                    "type": "chunk",
                    "content": f"word{seq % 10} ",
                }
                if cluster:
                    pipe.spublish(f"chat:{{{session_id}}}", orjson.dumps(event))
                else:
                    pipe.publish(f"chat:{session_id}", orjson.dumps(event))
                queued += 1
                if queued == PIPELINE:
                    await pipe.execute()
                    queued = 0
        if queued:
            await pipe.execute()
    finally:
        await redis.aclose()
    return time.perf_counter() - started


def main() -> None:
    port, answers, chunks = (int(value) for value in sys.argv[1:4])
    seconds = uvloop.run(publish(port, answers, chunks, cluster=sys.argv[4:5] == ["cluster"]))
    sys.stdout.write(f"{seconds:.6f}\n")


if __name__ == "__main__":
    main()
