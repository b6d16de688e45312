"""A store-id change: the server's history was replaced (a new database);
the client drops its seq state and starts over from seq 1 (PROTOCOL.md 7.6),
while running and from its saved state after a restart."""
from conftest import WAIT
from helpers import make_client, wait_until
import imtest
from mosquitto_im import JsonFileStore


def test_store_replaced_while_running_and_while_away(broker, clients, tmp_path):
    state = str(tmp_path / "bob.json")
    alice, sa = make_client(clients, broker, "alice", reconnect_delay=(0.05, 0.5))
    bob, sb = make_client(clients, broker, "bob", store=JsonFileStore(state), reconnect_delay=(0.05, 0.5))
    for i in range(3):
        alice.send("u/bob", "old%d" % i).result(WAIT)
    wait_until(lambda: len(sb.of("u/bob")) == 3, what="bob got 3")
    old_id = bob.store_id
    assert old_id and old_id == imtest.store_id(broker)

    imtest.replace_store(broker)            # running clients reconnect to a new store
    new_id = imtest.store_id(broker)
    assert new_id and new_id != old_id
    alice.send("u/bob", "new0").result(WAIT)
    alice.send("u/bob", "new1").result(WAIT)
    wait_until(lambda: len(sb.of("u/bob")) == 5, what="bob got the new ones")
    assert [(m.seq, m.body) for m in sb.of("u/bob")] == [
        (1, b"old0"), (2, b"old1"), (3, b"old2"), (1, b"new0"), (2, b"new1")]
    assert sb.resets == [(old_id, new_id)] and bob.store_id == new_id and bob.last("u/bob") == 2
    wait_until(lambda: sa.resets == [(old_id, new_id)], what="alice noticed too")

    # bob away: his saved state says seq 2 of the new store
    bob.close()
    saved = JsonFileStore(state)
    st = saved.load()
    saved.close()
    assert st.store_id == new_id and st.cursors["u/bob"] == 2
    alice.send("u/bob", "while away").result(WAIT)
    bob2, sb2 = make_client(clients, broker, "bob", store=JsonFileStore(state))
    wait_until(lambda: sb2.bodies("u/bob") == [b"while away"], what="only what is new")
    assert sb2.of("u/bob")[0].seq == 3 and sb2.resets == []
    assert bob2.client_id == bob.client_id      # the same device: the store keeps its id
    bob2.close()

    # replaced again while bob is away: his saved seqs count in a store gone
    imtest.replace_store(broker)
    newer_id = imtest.store_id(broker)
    alice.send("u/bob", "fresh").result(WAIT)
    bob3, sb3 = make_client(clients, broker, "bob", store=JsonFileStore(state))
    wait_until(lambda: sb3.bodies("u/bob") == [b"fresh"], what="from seq 1 of the newest store")
    assert sb3.of("u/bob")[0].seq == 1
    assert sb3.resets == [(new_id, newer_id)]
    assert sb.errors == [] and sb2.errors == [] and sb3.errors == []
