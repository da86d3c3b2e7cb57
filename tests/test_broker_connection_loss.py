"""A consumer holding unacknowledged messages survives Celery's clean-up after a broker connection
loss (layerq/kombu_fixes.py): the state kombu leaves behind — transport detached by `collect()`, the
channel still open with a message in hand — closes with a connection error kombu ignores, not an
AttributeError that stops the worker, and the message stays restorable."""

from __future__ import annotations

import uuid

from kombu import Connection

from layerq.kombu_fixes import guard_collected_channels
from storage.client import connect


def test_closing_a_collected_channel_with_a_message_in_hand_keeps_the_message(redis_url):
    guard_collected_channels()
    prefix = f"kf{uuid.uuid4().hex[:8]}:"
    conn = Connection(redis_url, transport_options={"global_keyprefix": prefix})
    queue = conn.SimpleQueue("cpu")
    queue.put({"job": 1})
    message = queue.get(timeout=5)  # delivered, not acked: the job is running
    assert message.payload == {"job": 1}

    conn._do_close_transport()  # what Connection.collect() leaves: the transport detached
    conn.close()  # Celery's close after collect(): used to raise AttributeError here

    r = connect(redis_url)
    assert r.hlen(f"{prefix}unacked") == 1  # still in kombu's unacked set: the sweep can put it back
