"""The publish stage: one Redis Streams entry per frame, pipelined per batch."""

from __future__ import annotations

import time
from typing import Callable

import redis

from fpnstream.errors import SinkError
from fpnstream.frames import BatchResult
from fpnstream.redact import redact_text
from fpnstream.schema import encode_entry, stream_key


class RedisStreamSink:
    def __init__(
        self,
        client: redis.Redis,
        prefix: str,
        maxlen: int,
        model_name: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._client = client
        self._prefix = prefix
        self._maxlen = maxlen or None
        self._model = model_name
        self._clock = clock

    def publish(self, result: BatchResult) -> list[float]:
        """Write the batch in one round trip; returns capture->acknowledged seconds per frame.

        The payload's latency_ms is taken just before the write (it has to be inside the
        entry); the returned figures, used for metrics, include the Redis round trip.

        Within a batch frames of one stream keep their order, and batches are published in
        the order they were formed, so each Redis stream is in frame order.
        """
        now = self._clock()
        pipe = self._client.pipeline(transaction=False)
        for meta, dets in zip(result.metas, result.detections):
            pipe.xadd(
                stream_key(self._prefix, meta.stream_id),
                encode_entry(meta, dets, self._model, now),
                maxlen=self._maxlen,
                approximate=True,
            )
        try:
            pipe.execute()
        except redis.RedisError as e:
            raise SinkError(f"publishing to Redis failed: {redact_text(str(e))}") from None
        done = self._clock()
        return [done - m.capture_ts for m in result.metas]
