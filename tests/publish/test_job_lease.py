import logging
import os
import threading
import time

import pytest

from fpnstream.core.errors import JobConflict
from fpnstream.publish.job_lease import JobLease


def test_a_second_job_on_the_prefix_is_refused_with_who_holds_it(redis_proc):
    client = redis_proc.client()
    with JobLease(client, "p", ttl_s=2.0, renew_s=0.1) as first:
        with pytest.raises(JobConflict) as e:
            JobLease(client, "p", ttl_s=2.0, renew_s=0.1).acquire()
        assert f"pid {os.getpid()}" in str(e.value) and "'p'" in str(e.value) and "--redis-prefix" in str(e.value)
        assert "\n" not in str(e.value)
        time.sleep(2.5)  # past the TTL: renewed all along
        assert client.get("p:job") == first.value.encode()
        JobLease(client, "other", ttl_s=2.0, renew_s=0.1).acquire()  # another prefix is free
    assert client.get("p:job") is None  # released


def test_a_lease_no_longer_renewed_is_taken_over_before_it_expires(redis_proc, caplog):
    """A killed job leaves its lease behind; the next job need not wait out the TTL."""
    client = redis_proc.client()
    dead = JobLease(client, "p", ttl_s=30.0, renew_s=0.1)
    dead.acquire()
    dead._stop.set()  # its process died: nobody renews it any more
    dead._thread.join()
    t0 = time.monotonic()
    with caplog.at_level(logging.WARNING), JobLease(client, "p", ttl_s=30.0, renew_s=0.1) as new:
        assert time.monotonic() - t0 < 5
        assert client.get("p:job") == new.value.encode()
        assert "stopped renewing its lease; this job takes over" in caplog.text
        dead.release()  # a late release of the old holder leaves the new lease alone
        assert client.get("p:job") == new.value.encode()


def test_a_lease_lost_with_redis_data_is_taken_again(redis_proc, caplog):
    client = redis_proc.client()
    with caplog.at_level(logging.WARNING), JobLease(client, "p", ttl_s=5.0, renew_s=0.1) as lease:
        client.flushall()
        deadline = time.monotonic() + 5
        while client.get("p:job") is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client.get("p:job") == lease.value.encode()
        assert 0 < client.pttl("p:job") <= 5000
    # The one place on the driver that notices Redis lost its data says so.
    assert "the job lease p:job was gone while this job held it (Redis restarted without its data" in caplog.text


def test_an_unreadable_holder_that_is_renewed_is_still_refused_in_one_line(redis_proc):
    """Whatever another version (or anyone) left in the key, the refusal is one line."""
    client = redis_proc.client()
    client.set("p:job", "garbage\nlines", px=60_000)
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(0.05):
            client.pexpire("p:job", 60_000)

    renewer = threading.Thread(target=renew)
    renewer.start()
    try:
        with pytest.raises(JobConflict, match="^[^\n]*a holder this version cannot read[^\n]*$"):
            JobLease(client, "p", ttl_s=60.0, renew_s=0.1).acquire()
    finally:
        stop.set()
        renewer.join()
    assert client.get("p:job") == b"garbage\nlines"  # not ours to take


def test_a_key_without_ttl_is_taken_over_and_one_of_another_type_is_a_one_line_error(redis_proc):
    client = redis_proc.client()
    client.set("p:job", "left by hand")  # no TTL: no job wrote this
    with JobLease(client, "p", ttl_s=5.0, renew_s=0.1) as lease:
        assert client.get("p:job") == lease.value.encode()
    client.rpush("q:job", "x")
    with pytest.raises(JobConflict, match=r"^cannot take the job lease q:job: WRONGTYPE[^\n]*; delete that key$"):
        JobLease(client, "q", ttl_s=5.0, renew_s=0.1).acquire()
