"""Offline: a message sent without a connection is kept in the store,
survives the process, and is sent (once) by the next start."""
import pytest

from conftest import WAIT
from helpers import make_client, wait_until
from mosquitto_im import ConnectionLostError, JsonFileStore, NotConnectedError


def test_send_offline_survives_a_restart(broker, clients, tmp_path):
    state = str(tmp_path / "alice.json")
    bob, sb = make_client(clients, broker, "bob", reconnect_delay=(0.05, 0.5))
    alice, sa = make_client(clients, broker, "alice", store=JsonFileStore(state), reconnect_delay=(0.05, 0.5))
    alice.send("u/bob", "first").result(WAIT)
    broker.stop()
    wait_until(lambda: not alice.connected, what="alice offline")
    fut = alice.send("u/bob", "written offline")
    with pytest.raises(NotConnectedError):
        alice.conversations().result(WAIT)
    [p] = alice.pending()
    assert p.body == b"written offline"
    alice.close()
    with pytest.raises(ConnectionLostError):
        fut.result(WAIT)

    broker.start()
    alice2, sa2 = make_client(clients, broker, "alice", store=JsonFileStore(state), start=False)
    assert alice2.client_id == alice.client_id and [x.cmid for x in alice2.pending()] == [p.cmid]
    alice2.start()
    assert alice2.flush(WAIT)
    assert [(r.cmid, r.seq) for r in sa2.receipts] == [(p.cmid, 2)]
    wait_until(lambda: sb.bodies("u/bob") == [b"first", b"written offline"], what="bob gets both, once")
    assert alice2.wait_online(WAIT)
    # alice2 resumed her inbox after `first` (her copy): nothing twice
    wait_until(lambda: sa2.bodies("u/alice") == [b"written offline"], what="alice2's copy")
