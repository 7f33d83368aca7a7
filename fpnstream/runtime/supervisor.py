"""Source supervision: one decoder thread per stream, feeding the frame mux.

A file is read once to its end. A live source is read connection after connection: on any
failure it backs off (exponential, with jitter) and reconnects, until it is stopped; frame
indices go on across connections and the first frame after one is marked `gap`.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable

from fpnstream.batching.mux import FrameMux
from fpnstream.core.backoff import Backoff
from fpnstream.core.errors import SourceError
from fpnstream.core.observer import PipelineObserver
from fpnstream.core.reports import StreamState
from fpnstream.runtime.ledger import StreamLedger
from fpnstream.sources.decoder import VideoDecoder

log = logging.getLogger(__name__)


@dataclass
class _Source:
    decoder: VideoDecoder
    stop: threading.Event
    thread: threading.Thread | None = None


# An http(s) URL counts as live (MJPEG, HLS, FLV feeds), so a video file served over HTTP
# is opened again at its end, for ever: say what to do where it happens.
_HTTP_FILE_HINT = " (an http(s) source counts as live and is opened again; a video file needs `live: false`)"


class SourceSupervisor:
    def __init__(self, ledger: StreamLedger, mux: FrameMux, observer: PipelineObserver,
                 backoff: Callable[[], Backoff]) -> None:
        self._ledger = ledger
        self._mux = mux
        self._observer = observer
        self._backoff = backoff
        self._sources: dict[str, _Source] = {}
        self._lock = threading.Lock()
        self._started = False

    def add(self, decoder: VideoDecoder, prepare: Callable[[], None] = lambda: None) -> None:
        """Start reading `decoder`'s stream. `prepare` (the stream's accounting and queue for
        this claim) runs under the lock a stopping decoder of the same stream holds for its
        last actions, so those land on the claim they belong to, never on this new one."""
        with self._lock:
            prepare()
            src = self._sources[decoder.spec.stream_id] = _Source(decoder, threading.Event())
            if self._started:
                self._start(src)

    def start(self) -> None:
        with self._lock:
            self._started = True
            for src in self._sources.values():
                if src.thread is None:
                    self._start(src)

    def lease_of(self, stream_id: str) -> str | None:
        """The claim the stream's current decoder reads for (None: no such stream)."""
        src = self._sources.get(stream_id)
        return None if src is None else src.decoder.lease

    def _if_current(self, src: _Source, action: Callable[[], object]) -> None:
        """Run `action` only while `src` is still its stream's decoder, under the lock `add`
        holds: a stopped decoder may outlive its stream's next start on this worker, and must
        then leave the new claim's queue and report alone (check and act as one step)."""
        with self._lock:
            if self._sources.get(src.decoder.spec.stream_id) is src:
                action()

    def stop(self, stream_id: str) -> bool:
        """Ask a stream's decoder to stop; False if there is no such stream."""
        src = self._sources.get(stream_id)
        if src is None:
            return False
        src.stop.set()
        return True

    def end(self, stream_id: str, state: StreamState, lease: str | None = None) -> bool:
        """Stop the stream's decoder (only if it reads for `lease`, when given), end it in
        the ledger as `state` and close its queue (what is queued is still handed out).
        False if there is no such stream. The caller makes this one step with its own lock."""
        if lease is not None and self.lease_of(stream_id) != lease or not self.stop(stream_id):
            return False
        self._ledger.end(stream_id, state)
        self._mux.close_stream(stream_id)
        return True

    def stream_ids(self) -> list[str]:
        return list(self._sources)

    def _start(self, src: _Source) -> None:
        src.thread = threading.Thread(target=self._run, args=(src,), name=f"decode-{src.decoder.spec.stream_id}", daemon=True)
        src.thread.start()

    def _run(self, src: _Source) -> None:
        sid = src.decoder.spec.stream_id
        try:
            if src.decoder.spec.live:
                self._run_live(src)
            else:
                self._read_connection(src, src.decoder)
                self._if_current(src, lambda: self._ledger.source_done(sid))
        except Exception as e:  # one broken stream ends that stream, not the job
            error = str(e)
            self._if_current(src, lambda: self._ledger.fail(sid, error))
            log.error("%s", e)
        finally:
            self._if_current(src, lambda: (self._observer.source_up(sid, False), self._mux.close_stream(sid)))

    def _run_live(self, src: _Source) -> None:
        sid = src.decoder.spec.stream_id
        report = self._ledger.report(sid)
        backoff = self._backoff()
        decoder = src.decoder
        while not src.stop.is_set():
            report.state = StreamState.CONNECTING
            try:
                self._read_connection(src, decoder, on_first_frame=backoff.reset)
                if src.stop.is_set():
                    break
                report.error = f"source {sid}: the stream ended" + (
                    _HTTP_FILE_HINT if decoder.spec.live_by_uri and decoder.spec.uri.lower().startswith(("http://", "https://"))
                    else "")
            except SourceError as e:
                report.error = str(e)
            if src.stop.is_set():
                break
            self._observer.source_up(sid, False)
            report.state = StreamState.BACKING_OFF
            delay = backoff.next_delay()
            log.warning("%s; reconnecting in %.1f s", report.error, delay)
            if src.stop.wait(delay):
                break
            report.reconnects += 1
            self._observer.reconnected(sid)
            decoder = decoder.reopened()
            src.decoder = decoder

    def _read_connection(self, src: _Source, decoder: VideoDecoder,
                         on_first_frame: Callable[[], None] | None = None) -> None:
        """Read one connection (or one file) to its end, feeding the mux."""
        sid = decoder.spec.stream_id
        report = self._ledger.report(sid)
        seen_decoded = seen_sampled = 0

        def account() -> None:
            nonlocal seen_decoded, seen_sampled
            self._observer.decoded(sid, decoder.frames_decoded - seen_decoded)
            if decoder.frames_sampled_out != seen_sampled:
                self._ledger.drop(sid, "sampled", decoder.frames_sampled_out - seen_sampled)
            report.decoded += decoder.frames_decoded - seen_decoded
            seen_decoded, seen_sampled = decoder.frames_decoded, decoder.frames_sampled_out

        try:
            t, paced = time.perf_counter(), 0.0
            for frame in decoder.frames():
                if report.total is None and decoder.expected_frames:
                    report.total = decoder.expected_frames
                slept = decoder.pacer.slept_s  # a realtime file's wait is not decoding
                self._observer.stage("decode", time.perf_counter() - t - (slept - paced))
                paced = slept
                if report.state in (StreamState.STARTING, StreamState.CONNECTING):
                    report.state = StreamState.STREAMING
                    self._observer.source_up(sid, True)
                    if on_first_frame:
                        on_first_frame()
                account()
                if src.stop.is_set():
                    # Decoded after the stop: never accepted, but accounted for (unless the
                    # stream has started again here since: that is another claim's report).
                    self._if_current(src, lambda: self._ledger.drop(sid, "stopped"))
                    break
                self._ledger.accept(sid)
                if not self._mux.put(frame):  # closed, or the stream reads for a newer claim here
                    self._ledger.unaccept(sid)
                    self._if_current(src, lambda: self._ledger.drop(sid, "stopped"))
                    break
                t = time.perf_counter()
            account()
            if decoder.warning:
                report.warning = decoder.warning
                log.warning("%s", decoder.warning)
        finally:
            decoder.close()
