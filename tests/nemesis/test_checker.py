"""Tests of the nemesis history checker, on synthetic histories.

    /usr/bin/python3 -m pytest -q tests/nemesis/test_checker.py

No broker: a small in-memory model of the plugin (seqs, cmid dedup, a DM's
two copies, edits, recalls, the store id) plays a run, and its clients
record what they see with history.Recorder.  The clean run must check
clean; each other test changes that history as little as it takes to break
one promise and asserts that exactly that anomaly kind is reported, with
the records that show it.
"""

import collections
import json
import os
import subprocess
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import checker as C  # noqa: E402
import history as H  # noqa: E402


# -- a model of the plugin ------------------------------------------------

class Clock:
    """A fake wall clock: each reading is a millisecond after the last, so
    histories are reproducible and excerpts sort the way they were made."""

    def __init__(self, t0=1700000000.0):
        self.n = 0
        self.t0 = t0

    def __call__(self):
        self.n += 1
        return self.t0 + self.n * 0.001


class Store:
    """One store epoch: timelines of messages, seq = index + 1."""

    def __init__(self, store_id):
        self.store_id = store_id
        self.tls = collections.defaultdict(list)
        self.by_cmid = {}      # (sender, cmid) -> receipt fields

    def frame(self, m):
        return {k: m[k] for k in ("timeline", "seq", "sender", "cmid",
                                  "body_hash", "flags", "ref_seq",
                                  "peer_seq")}

    def append(self, tl, sender, cmid, bh, flags=0, ref_seq=None):
        m = {"timeline": tl, "seq": len(self.tls[tl]) + 1, "sender": sender,
             "cmid": cmid, "body_hash": bh, "flags": flags,
             "ref_seq": ref_seq, "peer_seq": None}
        self.tls[tl].append(m)
        return m

    def apply(self, tl, ref, change, bh):
        # PROTOCOL.md 11.2: the original carries the latest body and
        # EDITED, or RECALLED and no body; a recall erases its edits too.
        orig = self.tls[tl][ref - 1]
        if change == "edit":
            orig["flags"] |= H.FLAG_EDITED
            orig["body_hash"] = bh
        else:
            orig["flags"] |= H.FLAG_RECALLED
            orig["body_hash"] = H.EMPTY_BODY_HASH
            for m in self.tls[tl]:
                if m["flags"] & H.FLAG_EDIT and m["ref_seq"] == ref:
                    m["flags"] |= H.FLAG_RECALLED
                    m["body_hash"] = H.EMPTY_BODY_HASH


class Model:
    """The broker: stores, answers and delivers live to connected clients."""

    def __init__(self, store_id):
        self.store = Store(store_id)
        self.clients = []

    def replace_store(self, store_id):
        self.store = Store(store_id)

    def readers(self, tl):
        return [c for c in self.clients if tl in c.timelines]

    def deliver(self, m):
        for c in self.readers(m["timeline"]):
            c.rec.live(store_id=self.store.store_id, **self.store.frame(m))

    def system(self, group, by):
        m = self.store.append(group, by, None, H.body_hash(
            json.dumps({"event": "create", "by": by})), H.FLAG_SYSTEM)
        self.deliver(m)
        return m

    def publish(self, sender, to, cmid, body, change=None, ref_seq=None):
        s = self.store
        k = (sender, cmid)
        if k in s.by_cmid:
            return dict(s.by_cmid[k], duplicate=True)
        bh = H.body_hash(body)
        flags = {None: 0, "edit": H.FLAG_EDIT, "recall": H.FLAG_RECALL}[change]
        out = []
        m = s.append(to, sender, cmid, bh, flags, ref_seq)
        out.append(m)
        own_seq = None
        # A direct message has a copy in the sender's inbox, except one to
        # oneself (store/sqlite/msg.c: `own != to`).
        if to.startswith("u/") and to != "u/" + sender:
            own = "u/" + sender
            own_ref = None
            if change:
                own_ref = s.tls[to][ref_seq - 1]["peer_seq"]
            c = s.append(own, sender, cmid, bh, flags, own_ref)
            m["peer_seq"], c["peer_seq"] = c["seq"], m["seq"]
            own_seq = c["seq"]
            out.append(c)
            if change:
                s.apply(own, own_ref, change, bh)
        if change:
            s.apply(to, ref_seq, change, bh)
        for x in out:
            self.deliver(x)
        r = {"timeline": to, "seq": m["seq"], "own_seq": own_seq,
             "duplicate": False}
        s.by_cmid[k] = r
        return r


class Client:
    """A client process: records every operation and every frame."""

    def __init__(self, model, d, proc, user, timelines, clock):
        self.model = model
        self.user = user
        self.timelines = timelines
        self.rec = H.Recorder(os.path.join(d, proc + ".jsonl"), proc, user,
                              proc + "-dev", clock=clock)
        self.last = {}
        self.n = 0

    def connect(self):
        self.rec.connect(broker="b1", session_present=False)
        self.model.clients.append(self)
        for tl in self.timelines:
            self.sync(tl)

    def disconnect(self):
        self.model.clients.remove(self)

    def sync(self, tl, after=None):
        s = self.model.store
        if after is None:
            after = self.last.get((s.store_id, tl), 0)
        for m in s.tls[tl][after:]:
            self.rec.synced(store_id=s.store_id, **s.frame(m))
        head = len(s.tls[tl])
        self.last[(s.store_id, tl)] = head
        self.rec.head(tl, head, 1, store_id=s.store_id)
        return head

    def send(self, to, body, qos=1, cmid=None, ack=True, change=None,
             ref_seq=None):
        if cmid is None:
            self.n += 1
            cmid = "%s-%d" % (self.rec.proc, self.n)
        if change == "edit":
            self.rec.edit(cmid, to, ref_seq, body=body, qos=qos)
        elif change == "recall":
            self.rec.recall(cmid, to, ref_seq, qos=qos)
            body = b""
        else:
            self.rec.send(cmid, to, body=body, qos=qos)
        r = self.model.publish(self.user, to, cmid, body, change, ref_seq)
        if ack and qos > 0:
            self.rec.ack(cmid)
            self.rec.receipt(cmid, r["timeline"], r["seq"], r["duplicate"],
                             0, self.model.store.store_id, r["own_seq"])
        return cmid, r

    def final(self):
        for tl in self.timelines:
            head = self.sync(tl, 0)
            self.rec.final(tl, head, self.model.store.store_id)


def build_clean(d):
    """A run with five clients, DMs and a group, faults, re-sends after a
    disconnect, a duplicate receipt, edits and recalls, a store replaced
    in the middle, and a final sync of everything.  Returns the cmids the
    tests break things with."""
    clock = Clock()
    model = Model(111)
    nem = H.Recorder(os.path.join(d, "nemesis.jsonl"), H.NEMESIS, None,
                     None, clock=clock)
    a1 = Client(model, d, "a1", "alice", ["u/alice", "g/team"], clock)
    a2 = Client(model, d, "a2", "alice", ["u/alice", "g/team"], clock)
    b1 = Client(model, d, "b1", "bob", ["u/bob", "g/team"], clock)
    c1 = Client(model, d, "c1", "carol", ["u/carol", "g/team"], clock)
    d1 = Client(model, d, "d1", "dave", ["u/dave"], clock)
    cs = [a1, a2, b1, c1, d1]
    for c in cs:
        c.connect()
    ids = {}

    # --- store 111 ---
    for u in ("alice", "bob", "carol"):
        a1.rec.may_read("g/team", True, reader=u, moderator=(u == "alice"))
    a1.rec.may_read("g/team", False, reader="dave")
    model.system("g/team", "alice")
    hi, r_hi = a1.send("u/bob", "hi bob")
    b1.send("u/alice", "hi alice")
    c_first, r_c = c1.send("g/team", "hello team")
    a1.send("g/team", "hi all")
    b_grp, r_b = b1.send("g/team", "bob here")
    a2.send("u/carol", "carol, from the laptop")
    # The broker is killed: a1's publish is journaled but its PUBACK lost;
    # a1 re-sends after reconnecting and gets duplicate: true.
    nem.fault("kill", "b1", "start")
    b1.disconnect()
    lost_ack, _ = a1.send("u/bob", "are you there?", ack=False)
    a1.disconnect()
    nem.fault("kill", "b1", "end")
    a1.connect()
    a1.send("u/bob", "are you there?", cmid=lost_ack)
    b1.connect()
    a1.send("u/bob", "hi bob!", change="edit", ref_seq=r_hi["seq"])
    c1.send("g/team", b"", change="recall", ref_seq=r_c["seq"])
    a1.send("g/team", b"", change="recall", ref_seq=r_b["seq"])  # the owner
    c1.send("g/team", "fire and forget", qos=0)

    # --- the store is replaced: store id 222, seqs restart ---
    nem.fault("wipe-store", "b1", "start")
    model.replace_store(222)
    for c in cs:
        c.disconnect()
    nem.fault("wipe-store", "b1", "end")
    for c in cs:
        c.connect()

    # --- store 222 ---
    model.system("g/team", "alice")
    ids["carol_to_bob"], _ = c1.send("u/bob", "bob, it's carol")
    a_dm, r_adm = a1.send("u/bob", "second life")
    b1.send("u/alice", "welcome back")
    ids["c_keep"], _ = c1.send("g/team", "carol again")
    ids["c_q0"], _ = c1.send("g/team", "qos 0 this time", qos=0)
    ids["a2_grp"], _ = a2.send("g/team", "laptop to team")
    b_msg, r_bm = b1.send("g/team", "bob, typo")
    ids["b_edit"], _ = b1.send("g/team", "bob, fixed", change="edit",
                               ref_seq=r_bm["seq"])
    a1.send("u/bob", "second life!", change="edit", ref_seq=r_adm["seq"])
    ids["a_recall"], _ = a1.send("u/bob", b"", change="recall",
                                 ref_seq=r_adm["seq"])
    ids["a_dm"] = a_dm
    # bob's connection drops with a publish in flight; re-sent, once.
    nem.fault("partition", "b1", "start")
    resend, _ = b1.send("u/carol", "carol?", ack=False)
    b1.disconnect()
    ids["while_b_away"], _ = c1.send("g/team", "bob misses this live")
    nem.fault("partition", "b1", "end")
    b1.connect()
    b1.send("u/carol", "carol?", cmid=resend)
    ids["last_dm"], _ = a1.send("u/bob", "last words")
    ids["last_grp"], _ = a1.send("g/team", "the end")

    # --- heal, then every client syncs everything from 0 ---
    for c in cs:
        c.final()
    for r in [nem] + [c.rec for c in cs]:
        r.close()
    return ids


# -- helpers ----------------------------------------------------------------

def read_all(d):
    out = {}
    for name in sorted(os.listdir(d)):
        with open(os.path.join(d, name)) as f:
            out[name] = [json.loads(line) for line in f if line.strip()]
    return out


def write_all(d, files):
    for name, recs in files.items():
        with open(os.path.join(d, name), "w") as f:
            for r in recs:
                f.write(json.dumps(r) + "\n")


def run(d):
    return C.check(C.load([d]))


def kinds(rep):
    return {a.kind for a in rep.anomalies}


def only(rep, kind):
    """Asserts that every anomaly is of `kind` (and there is one) and
    returns them."""
    assert rep.anomalies, "expected %s, got no anomaly" % kind
    assert kinds(rep) == {kind}, rep.text()
    assert all(0 < len(a.records) <= C.EXCERPT_MAX for a in rep.anomalies)
    return [a for a in rep.anomalies if a.kind == kind]


def frames(files, **match):
    """(file, index, record) of the frames matching every field given."""
    out = []
    for name, recs in files.items():
        for i, r in enumerate(recs):
            if r["kind"] in H.FRAME_KINDS and all(
                    r.get(k) == v for k, v in match.items()):
                out.append((name, i, r))
    return out


def drop(files, pred):
    for name in files:
        files[name] = [r for r in files[name] if not pred(r)]


def seq_of(files, cmid, tl, store_id=222):
    seqs = {r["seq"] for _, _, r in frames(files, cmid=cmid, timeline=tl,
                                           store_id=store_id)}
    assert len(seqs) == 1, seqs
    return seqs.pop()


@pytest.fixture
def clean(tmp_path):
    d = str(tmp_path / "hist")
    os.makedirs(d)
    ids = build_clean(d)
    return d, ids, read_all(d)


# -- the clean run ------------------------------------------------------------

def test_clean_history_has_no_anomaly(clean):
    d, ids, files = clean
    rep = run(d)
    assert rep.ok, rep.text()
    # The run exercised what it claims to.
    allrecs = [r for rs in files.values() for r in rs]
    assert any(r["kind"] == "receipt" and r["duplicate"] for r in allrecs)
    assert {r.get("store_id") for r in allrecs if r["kind"] == "live"} == \
        {111, 222}
    assert any(r["kind"] == "live" and r["flags"] & H.FLAG_EDIT
               for r in allrecs)
    assert any(r["kind"] == "synced" and r["flags"] & H.FLAG_RECALLED
               for r in allrecs)
    assert rep.ops["send"] > 10 and rep.ops["final"] == 9
    assert rep.faults == {"kill": 1, "wipe-store": 1, "partition": 1}
    assert rep.stats["copies due: found in the final view"] > 10
    assert rep.stats["store epochs"] == 2
    # Store 111 was replaced: what was promised there is not checked
    # against store 222.
    assert rep.stats["copies due: store replaced later (not checked)"] > 0
    assert "anomalies: none" in rep.text()


def test_cli(clean, tmp_path):
    d, ids, files = clean
    me = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                      "checker.py")
    p = subprocess.run([sys.executable, me, d], capture_output=True,
                       text=True)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "anomalies: none" in p.stdout
    drop(files, lambda r: r.get("cmid") == ids["c_q0"] and
         r["kind"] in H.FRAME_KINDS)
    write_all(d, files)
    p = subprocess.run([sys.executable, me, d, "--json"],
                       capture_output=True, text=True)
    assert p.returncode == 1
    out = json.loads(p.stdout)
    assert out["anomalies_by_kind"] == {"gap": 1}
    recs = out["anomalies"][0]["records"]
    assert recs and all(".jsonl:" in r["at"] for r in recs)
    # Files can be named one by one too.
    p = subprocess.run([sys.executable, me] + sorted(
        os.path.join(d, f) for f in os.listdir(d)), capture_output=True,
        text=True)
    assert p.returncode == 1 and "== gap #1" in p.stdout


def test_truncated_last_line_is_a_note(clean):
    d, ids, files = clean
    with open(os.path.join(d, "c1.jsonl"), "a") as f:
        f.write('{"t": 1700000099.0, "proc": "c1", "kind": "li')
    rep = run(d)
    assert rep.ok, rep.text()
    assert any("c1.jsonl" in n and "not JSON" in n for n in rep.notes)


# -- one test per anomaly kind -----------------------------------------------

def test_lost_tail_of_a_group(clean):
    # The store loses the last acknowledged message of g/team: its frames
    # are gone and the head went back by one (a rolled back store that
    # kept its id).
    d, ids, files = clean
    cm = ids["last_grp"]
    s = seq_of(files, cm, "g/team")
    drop(files, lambda r: r.get("cmid") == cm and r["kind"] in H.FRAME_KINDS)
    for rs in files.values():
        for r in rs:
            if (r["kind"] in ("final", "head") and r["timeline"] == "g/team"
                    and r["store_id"] == 222 and r["head_seq"] == s):
                r["head_seq"] = s - 1
    write_all(d, files)
    [a] = only(run(d), C.LOST)
    assert cm in a.message and "g/team" in a.message
    assert {r.kind for r in a.records} >= {"send", "ack", "receipt", "final"}
    assert all(r.cmid == cm for r in a.records if r.kind != "final")


def test_lost_own_copy_of_a_dm(clean):
    # bob has the DM, alice's own copy of it is gone.
    d, ids, files = clean
    cm = ids["last_dm"]
    s = seq_of(files, cm, "u/alice")
    drop(files, lambda r: r.get("cmid") == cm and r["kind"] in H.FRAME_KINDS
         and r["timeline"] == "u/alice")
    for rs in files.values():
        for r in rs:
            if (r["kind"] in ("final", "head") and r["timeline"] == "u/alice"
                    and r["store_id"] == 222 and r["head_seq"] == s):
                r["head_seq"] = s - 1
    write_all(d, files)
    [a] = only(run(d), C.LOST)
    assert "u/alice" in a.message and cm in a.message


def test_lost_frame_delivered_above_the_final_head(clean):
    # bob saw a message live that the final syncs do not know.
    d, ids, files = clean
    [(name, i, r)] = frames(files, kind="live", timeline="u/bob",
                            cmid=ids["last_dm"])
    ghost = dict(r, seq=r["seq"] + 1, cmid="ghost", body_hash="00" * 32)
    files[name].insert(i + 1, ghost)
    write_all(d, files)
    [a] = only(run(d), C.LOST)
    assert "above the final head_seq" in a.message
    assert any(r.cmid == "ghost" for r in a.records)


def test_duplicated(clean):
    # carol's QoS 0 message is stored a second time under the cmid (and
    # body) of her previous one: one (sender, cmid) at two seqs.
    d, ids, files = clean
    [(_, _, keep)] = frames(files, kind="live", proc="c1",
                            cmid=ids["c_keep"])
    for _, _, r in frames(files, cmid=ids["c_q0"]):
        r["cmid"] = keep["cmid"]
        r["body_hash"] = keep["body_hash"]
    write_all(d, files)
    [a] = only(run(d), C.DUPLICATED)
    assert ids["c_keep"] in a.message
    assert len({r.seq for r in a.records}) == 2


def test_duplicated_across_timelines(clean):
    # One (sender, cmid) in two conversations: a repeat to another
    # recipient must not be stored again (PROTOCOL.md 3.4).
    d, ids, files = clean
    [(_, _, other)] = frames(files, kind="live", proc="c1",
                             cmid=ids["c_keep"])
    # carol's DM to bob gets the cmid and body of her group message.
    for _, _, x in frames(files, cmid=ids["carol_to_bob"]):
        x["cmid"] = other["cmid"]
        x["body_hash"] = other["body_hash"]
    write_all(d, files)
    rep = run(d)
    [dup] = [a for a in rep.anomalies if a.kind == C.DUPLICATED]
    assert "g/team" in dup.message and "u/bob" in dup.message
    # The DM itself is now missing under its own cmid, in both copies:
    # that is `lost` too.
    assert kinds(rep) == {C.DUPLICATED, C.LOST}
    assert all(ids["carol_to_bob"] in a.message for a in rep.anomalies
               if a.kind == C.LOST)


def test_gap(clean):
    # A message nobody acknowledged (QoS 0) vanishes from every view: no
    # promise broken for its sender, but the timeline has a hole.
    d, ids, files = clean
    s = seq_of(files, ids["c_q0"], "g/team")
    drop(files, lambda r: r.get("cmid") == ids["c_q0"] and
         r["kind"] in H.FRAME_KINDS)
    write_all(d, files)
    [a] = only(run(d), C.GAP)
    assert "g/team" in a.message and "seq %d " % s in a.message
    assert {r.seq for r in a.records if r.kind in H.FRAME_KINDS} == \
        {s - 1, s + 1}
    assert any(r.kind == "final" for r in a.records)


def test_gap_below_first_seq_is_not_one(clean):
    # Retention moved first_seq past the hole: not a gap.
    d, ids, files = clean
    s = seq_of(files, ids["c_q0"], "g/team")
    drop(files, lambda r: r.get("cmid") == ids["c_q0"] and
         r["kind"] in H.FRAME_KINDS)
    for rs in files.values():
        for r in rs:
            if r["kind"] == "final" and r["timeline"] == "g/team" and \
                    r["store_id"] == 222:
                r["first_seq"] = s + 1
    write_all(d, files)
    assert run(d).ok


def test_conflict_body(clean):
    # bob got a body live that is not the one stored at that seq (his
    # final sync returned the right one).
    d, ids, files = clean
    [(name, i, r)] = frames(files, kind="live", proc="b1",
                            cmid=ids["a2_grp"])
    r["body_hash"] = H.body_hash("something else")
    write_all(d, files)
    [a] = only(run(d), C.CONFLICT)
    assert "g/team seq %d" % r["seq"] in a.message
    assert {x.proc for x in a.records} == {"a1", "b1"}


def test_conflict_seq_reused(clean):
    # One (timeline, seq) holding two different messages in one store id.
    d, ids, files = clean
    [(name, i, r)] = frames(files, kind="live", proc="c1",
                            cmid=ids["a2_grp"])
    r["sender"], r["cmid"] = "mallory", "m-1"
    write_all(d, files)
    [a] = only(run(d), C.CONFLICT)
    assert "two messages" in a.message and "mallory" in a.message


def test_conflict_edited_body(clean):
    # A copy marked EDITED whose body no edit of it carried.
    d, ids, files = clean
    hits = [x for x in frames(files, kind="synced", proc="c1",
                              store_id=222, timeline="g/team")
            if x[2]["flags"] & H.FLAG_EDITED]
    name, i, r = hits[-1]
    r["body_hash"] = H.body_hash("bogus edit")
    write_all(d, files)
    [a] = only(run(d), C.CONFLICT)
    assert "EDITED with a body no edit" in a.message
    assert any(x.flags & H.FLAG_EDIT for x in a.records)


def test_order(clean):
    # Two live deliveries of g/team to bob, in one connection, swapped.
    d, ids, files = clean
    recs = files["b1.jsonl"]
    idx = [i for i, r in enumerate(recs) if r["kind"] == "live" and
           r["timeline"] == "g/team" and r["store_id"] == 222]
    i, j = idx[0], idx[1]
    assert not any(r["kind"] == "connect" for r in recs[i:j])
    # The frames change places; the times stay where they were written.
    ti, tj = recs[i]["t"], recs[j]["t"]
    recs[i], recs[j] = dict(recs[j], t=ti), dict(recs[i], t=tj)
    write_all(d, files)
    [a] = only(run(d), C.ORDER)
    assert [r.proc for r in a.records] == ["b1", "b1"]
    assert a.records[0].seq > a.records[1].seq


def test_order_repeat(clean):
    # A frame delivered twice on one connection: "each once".
    d, ids, files = clean
    [(name, i, r)] = frames(files, kind="live", proc="c1",
                            cmid=ids["a2_grp"])
    files[name].insert(i + 1, dict(r, t=r["t"] + 0.0001))
    write_all(d, files)
    [a] = only(run(d), C.ORDER)
    assert {x.seq for x in a.records} == {r["seq"]}


def test_redelivery_after_reconnect_is_not_order(clean):
    # A persistent session redelivers on a new connection: allowed.
    d, ids, files = clean
    recs = files["b1.jsonl"]
    live = [r for r in recs if r["kind"] == "live" and
            r["store_id"] == 222 and r["timeline"] == "g/team"]
    recs.insert(len(recs) - 1, {"t": recs[-1]["t"], "proc": "b1",
                                "user": "bob", "dev": "b1-dev",
                                "kind": "connect", "broker": "b2"})
    recs.insert(len(recs) - 1, dict(live[0]))
    write_all(d, files)
    assert run(d).ok


def test_late_frame_of_the_old_store_is_not_an_anomaly(clean):
    # A persistent session delivers a frame of store 111 after bob moved
    # to store 222 (PROTOCOL.md 7, step 6: it MAY be dropped).
    d, ids, files = clean
    recs = files["b1.jsonl"]
    old = next(r for r in recs if r["kind"] == "live" and
               r["store_id"] == 111)
    recs.insert(len(recs) - 3, dict(old, t=recs[-4]["t"]))
    write_all(d, files)
    assert run(d).ok


def test_receipt_mismatch(clean):
    d, ids, files = clean
    for r in files["a2.jsonl"]:
        if r["kind"] == "receipt" and r["cmid"] == ids["a2_grp"]:
            r["seq"] += 1
            bad = r
    write_all(d, files)
    [a] = only(run(d), C.RECEIPT_MISMATCH)
    assert ids["a2_grp"] in a.message
    assert any(x.kind == "receipt" and x.seq == bad["seq"]
               for x in a.records)
    assert any(x.kind in H.FRAME_KINDS for x in a.records)


def test_edit_target_recall_of_another_senders_message(clean):
    # alice's recall in bob's inbox names carol's message instead of hers.
    d, ids, files = clean
    carol = seq_of(files, ids["carol_to_bob"], "u/bob")
    for _, _, r in frames(files, cmid=ids["a_recall"], timeline="u/bob"):
        r["ref_seq"] = carol
    write_all(d, files)
    rep = run(d)
    ks = only(rep, C.EDIT_TARGET)
    msgs = " | ".join(a.message for a in ks)
    assert "a message of carol" in msgs
    hit = next(a for a in ks if "a message of carol" in a.message)
    assert {r.sender for r in hit.records} == {"alice", "carol"}


def test_edit_target_system_message(clean):
    # bob's edit names the group's system message (seq 1 of g/team).
    d, ids, files = clean
    for _, _, r in frames(files, cmid=ids["b_edit"]):
        r["ref_seq"] = 1
    for r in files["b1.jsonl"]:
        if r["kind"] == "edit" and r["cmid"] == ids["b_edit"]:
            r["ref_seq"] = 1
    write_all(d, files)
    ks = only(run(d), C.EDIT_TARGET)
    assert any("a system message" in a.message for a in ks)


@pytest.mark.parametrize("flag,body,says", [
    (H.FLAG_RECALLED, H.EMPTY_BODY_HASH, "RECALLED but no recall"),
    (H.FLAG_EDITED, None, "EDITED but no edit"),
])
def test_edit_target_changed_without_a_change(clean, flag, body, says):
    # bob's final sync shows carol's message recalled (or edited), and no
    # recall (or edit) of it exists.
    d, ids, files = clean
    hits = frames(files, kind="synced", proc="b1", timeline="u/bob",
                  cmid=ids["carol_to_bob"])
    _, _, r = hits[-1]
    r["flags"] |= flag
    if body is not None:
        r["body_hash"] = body
    write_all(d, files)
    [a] = only(run(d), C.EDIT_TARGET)
    assert says in a.message and a.records[0].cmid == ids["carol_to_bob"]


def test_unauthorised_inbox(clean):
    # A frame of u/bob delivered to alice.
    d, ids, files = clean
    [(_, _, r)] = frames(files, kind="live", proc="b1",
                         cmid=ids["carol_to_bob"])
    recs = files["a1.jsonl"]
    at = next(i for i, x in enumerate(recs) if x["t"] > r["t"])
    recs.insert(at, dict(r, proc="a1", user="alice", dev="a1-dev"))
    write_all(d, files)
    [a] = only(run(d), C.UNAUTHORISED)
    assert "u/bob" in a.message and a.records[0].proc == "a1"


def test_unauthorised_group(clean):
    # dave was never in g/team (may_read false) and gets one of its frames.
    d, ids, files = clean
    [(_, _, r)] = frames(files, kind="live", proc="c1",
                         cmid=ids["a2_grp"])
    recs = files["d1.jsonl"]
    at = next(i for i, x in enumerate(recs) if x["t"] > r["t"])
    recs.insert(at, dict(r, proc="d1", user="dave", dev="d1-dev"))
    write_all(d, files)
    [a] = only(run(d), C.UNAUTHORISED)
    assert "dave" in a.message
    assert [x.kind for x in a.records] == ["may_read", "live"]


def test_final_diverges(clean):
    # bob's final view lacks one message the others hold.
    d, ids, files = clean
    s = seq_of(files, ids["while_b_away"], "g/team")
    drop(files, lambda r: r["proc"] == "b1" and r.get("seq") == s and
         r.get("timeline") == "g/team" and r.get("store_id") == 222 and
         r["kind"] in H.FRAME_KINDS)
    write_all(d, files)
    [a] = only(run(d), C.FINAL_DIVERGES)
    assert "b1" in a.message and "[%d]" % s in a.message
    assert any(r.kind == "final" and r.proc == "b1" for r in a.records)


# -- membership by seq, on hand-made records ------------------------------

def _rec(t, proc, user, kind, **kw):
    return dict(t=t, proc=proc, user=user, dev=proc, kind=kind, **kw)


def _frame(t, proc, user, seq, kind="live", sid=5):
    return _rec(t, proc, user, kind, timeline="g/x", seq=seq, sender="o",
                cmid="o-%d" % seq, body_hash="h%d" % seq, flags=0,
                store_id=sid)


def test_removal_by_seq():
    # carol removed at seq 3 (the reply arrived at t=10): frames up to 3
    # may still arrive after it (queued before), seq 4 never, even if it
    # arrived before the reply was recorded; after she is allowed again
    # (t=20) everything is hers to read again, older seqs included.
    fact = _rec(10, "o1", "owner", "may_read", timeline="g/x",
                allowed=False, reader="carol", seq=3, store_id=5)
    again = _rec(20, "o1", "owner", "may_read", timeline="g/x",
                 allowed=True, reader="carol")
    ok = [fact, again, _frame(9, "c", "carol", 1), _frame(11, "c", "carol", 2),
          _frame(12, "c", "carol", 3), _frame(21, "c", "carol", 4, "synced"),
          _frame(22, "c", "carol", 5)]
    assert C.check(ok).ok, C.check(ok).text()
    bad = [fact, again, _frame(9, "c", "carol", 4)]
    rep = C.check(bad)
    assert kinds(rep) == {C.UNAUTHORISED}
    bad = [fact, again, _frame(15, "c", "carol", 4, "synced")]
    assert kinds(C.check(bad)) == {C.UNAUTHORISED}


def test_check_accepts_dicts_and_an_empty_history():
    assert C.check([]).ok
    recs = [_rec(1, "p", "u", "send", cmid="x", to="g/x", body_hash="h",
                 qos=1),
            _rec(2, "p", "u", "ack", cmid="x")]
    rep = C.check(recs)
    # No final view: nothing can be said about x, and nothing is.
    assert rep.ok
    assert rep.stats["acknowledged messages"] == 1


# -- liveness ---------------------------------------------------------------

def test_liveness_pairs_requests_and_names_the_faults_of_a_stall():
    recs = [
        _rec(0, "nemesis", None, "fault", action="kill", target="standby",
             phase="start"),
        _rec(1, "p", "u", "connect", broker="b1"),
        _rec(2, "p", "u", "request", rid="r1", op="sync"),
        _rec(2.05, "p", "u", "reply", rid="r1", status=0),
        _rec(3, "p", "u", "request", rid="r2", op="sync"),      # silence
        _rec(40, "nemesis", None, "fault", action="kill", target="standby",
             phase="end"),
        _rec(41, "p", "u", "reply", rid="r2", status=0),
        _rec(42, "p", "u", "request", rid="r3", op="ack"),
        _rec(44, "p", "u", "connect", broker="b2"),             # r3 cut short
        _rec(45, "p", "u", "request", rid="r4", op="sync"),
        _rec(46, "q", "v", "connect", broker="b2"),
        _rec(47, "q", "v", "request", rid="r1", op="sync"),     # q's own r1
        _rec(47.5, "q", "v", "reply", rid="r1", status=0),
        _rec(60, "p", "u", "head", timeline="u/u", head_seq=0, first_seq=1),
    ]
    rep = C.check(recs)
    assert rep.ok                      # liveness is never an anomaly
    lv = rep.liveness.summary()
    assert lv["requests"] == 5
    assert lv["answered"] == 3
    assert lv["unanswered_reconnected"] == 1
    assert lv["unanswered_at_end"] == 1
    assert lv["max_answered_s"] == 38
    # r2 (38 s, answered) and r4 (15 s, no answer by the end) are stalls.
    assert lv["stalls"] == 2
    top = rep.liveness.stalls[0]
    assert (top.req.rid, top.broker, top.why) == ("r2", "b1", "answered")
    assert top.faults == [("kill", "standby")]
    assert rep.liveness.stalls[1].why == "end of history"
    assert "stalls" in rep.text() and "kill standby" in rep.text()
    j = rep.to_json()["liveness"]
    assert j["longest"][0]["rid"] == "r2"
    # Without request records there is no liveness section.
    assert C.check(recs[:2]).liveness is None


# -- size -------------------------------------------------------------------

def build_big(d, n_records):
    """A long clean run: 8 clients, 2 groups and DMs, live and final sync."""
    clock = Clock()
    model = Model(7)
    users = ["u%d" % i for i in range(8)]
    cs = []
    for i, u in enumerate(users):
        cs.append(Client(model, d, "p%d" % i, u,
                         ["u/" + u, "g/even" if i % 2 == 0 else "g/odd",
                          "g/all"], clock))
    for c in cs:
        c.connect()
    n = 0
    while True:
        for i, c in enumerate(cs):
            n += 1
            k = n % 3
            to = ("g/all" if k == 0 else
                  ("g/even" if i % 2 == 0 else "g/odd") if k == 1 else
                  "u/" + users[(i + n) % 8])
            c.send(to, "m%d" % n)
        if clock.n > n_records * 0.65:
            break
    for c in cs:
        c.final()
        c.rec.close()


def test_200k_records_check_clean(tmp_path):
    # Size, not speed: a long run's history loads and checks (how fast is
    # printed, not asserted: CI shares its two cores with other tests).
    d = str(tmp_path / "big")
    os.makedirs(d)
    build_big(d, 200000)
    t0 = time.monotonic()
    hist = C.load([d])
    rep = C.check(hist)
    took = time.monotonic() - t0
    assert len(hist) >= 200000
    assert rep.ok, rep.text()
    print("\n%d records loaded and checked in %.2f s" % (len(hist), took))
