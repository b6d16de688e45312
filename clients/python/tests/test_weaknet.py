"""The issue's "done when": 1,000 messages through a link that drops every
half second, with a broker restart in between, received on two devices:
every message once, in order."""
from conftest import WAIT
from helpers import make_client, wait_until
from mosquitto_im import JsonFileStore, Status
from weaknet import WeakLink

N = 1000


def test_thousand_messages_flapping_link_and_restart(make_broker, clients, tmp_path):
    b = make_broker()
    link = WeakLink(b.port, period=0.5).start()
    try:
        fast = dict(reconnect_delay=(0.05, 0.5), keepalive=10)
        alice, sa = make_client(clients, link.port, "alice", store=JsonFileStore(str(tmp_path / "alice.json")),
                                start=False, **fast)
        phone, sp = make_client(clients, link.port, "bob", client_id="bob-phone", start=False, **fast)
        laptop, sl = make_client(clients, link.port, "bob", client_id="bob-laptop",
                                 store=JsonFileStore(str(tmp_path / "laptop.json")), start=False, **fast)
        for c in (alice, phone, laptop):
            c.start()
        futs = []
        for i in range(N):
            futs.append(alice.send("u/bob", "m%04d" % i))
            if i % 100 == 99:
                # Spread the sends over the drops: every 100, one more drop.
                d0 = link.drops
                wait_until(lambda: link.drops > d0, what="the link drops")
            if i == N // 2:
                # Half sent, some stored, some not, some without a Receipt:
                # the broker goes down and comes back on its data.
                wait_until(lambda: sum(f.done() for f in futs) >= N // 4, what="a quarter stored")
                b.restart()
        receipts = [f.result(WAIT * 2) for f in futs]
        assert all(r.status == Status.OK for r in receipts)
        # each stored once: the receipts of re-sends name the original
        assert sorted(r.seq for r in receipts) == list(range(1, N + 1))
        assert [r.seq for r in receipts] == list(range(1, N + 1)), "stored in send order"
        want = [b"m%04d" % i for i in range(N)]
        for name, seen in (("phone", sp), ("laptop", sl)):
            wait_until(lambda: len(seen.of("u/bob")) >= N, timeout=WAIT * 2, what="%s got %d" % (name, N))
            got = seen.of("u/bob")
            assert [m.seq for m in got] == list(range(1, N + 1)), name + ": every seq once, in order"
            assert [m.body for m in got] == want, name + ": every message once, in send order"
            assert seen.errors == [] and seen.resets == []
        # alice's own copies too
        wait_until(lambda: len(sa.of("u/alice")) >= N, timeout=WAIT * 2, what="alice's copies")
        assert [m.body for m in sa.of("u/alice")] == want
        assert alice.flush(WAIT) and alice.pending() == []
        # the link really flapped, and everyone came back each time
        assert link.drops >= 6, link.drops
        assert link.accepted >= 6, link.accepted
        for name, seen in (("alice", sa), ("phone", sp), ("laptop", sl)):
            assert seen.status.count("offline") >= 6, (name, seen.status.count("offline"))
        print("link: %d connections, %d cut, %d refused while the broker was down; "
              "%d receipts of re-sends (duplicate)" % (link.accepted, link.drops, link.refused,
                                                       sum(r.duplicate for r in receipts)))
    finally:
        link.stop()
