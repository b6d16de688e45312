#!/usr/bin/python3
"""Checks a nemesis history (see history.py, README.md) after the run.

    checker.py HISTORY_DIR_OR_FILES... [--json] [--max-per-kind N]

Reads every *.jsonl file named or found below the directories named,
checks the whole history and prints a summary; exits 1 if any anomaly was
found, 2 if the history could not be read, 0 otherwise.

`check(records)` is the library entry point: records are dicts (or the
result of `load(paths)`), and the records of one process must come in the
order that process wrote them; the order across processes does not matter.

Everything is keyed by store epoch (the store id of the Receipt, frame or
sync batch): seqs are only comparable within one store id (PROTOCOL.md 6.4),
so each epoch is checked on its own.  The work is a few dict passes over
the history: about linear in its size.
"""

import argparse
import collections
import json
import os
import sys

try:  # run as a script from anywhere, or imported as tests.nemesis.checker
    from . import history as H
except ImportError:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import history as H

# Anomaly kinds: stable names, used by tests and by whoever reads --json.
LOST = "lost"
DUPLICATED = "duplicated"
GAP = "gap"
CONFLICT = "conflict"
ORDER = "order"
RECEIPT_MISMATCH = "receipt_mismatch"
EDIT_TARGET = "edit_target"
UNAUTHORISED = "unauthorised"
FINAL_DIVERGES = "final_diverges"
ANOMALY_KINDS = (LOST, DUPLICATED, GAP, CONFLICT, ORDER, RECEIPT_MISMATCH,
                 EDIT_TARGET, UNAUTHORISED, FINAL_DIVERGES)

# At most this many records illustrate one anomaly.
EXCERPT_MAX = 10

# The flags that say what a message IS; the others (COMPRESSED, EDITED,
# RECALLED) say how it is stored or what later happened to it, and may
# differ between two correct copies of one seq.
STRUCT_FLAGS = H.FLAG_SYSTEM | H.FLAG_EDIT | H.FLAG_RECALL
CHANGE_FLAGS = H.FLAG_EDIT | H.FLAG_RECALL
LATER_FLAGS = H.FLAG_EDITED | H.FLAG_RECALLED

# A record, compact: a history of a million lines must fit in memory.  A
# tuple costs a third of the dict json.loads makes, and the string values
# (user names, timelines, cmids and body hashes repeated once per reader)
# are shared through one cache.  Unknown fields are dropped.
FIELDS = ("t", "proc", "user", "dev", "kind", "cmid", "to", "body_hash",
          "qos", "ref_seq", "change", "timeline", "seq", "duplicate",
          "status", "store_id", "own_seq", "sender", "flags", "peer_seq",
          "head_seq", "first_seq", "action", "target", "phase", "broker",
          "session_present", "allowed", "reader", "moderator", "rid", "op")
Rec = collections.namedtuple("Rec", FIELDS + ("src",))
_SHARED = frozenset(("proc", "user", "dev", "kind", "cmid", "to",
                     "body_hash", "timeline", "sender", "change", "action",
                     "target", "broker", "reader", "phase", "op"))
_SHARED_IDX = tuple(i for i, f in enumerate(FIELDS) if f in _SHARED)


class _Builder:
    """Turns dicts into Recs, sharing equal strings."""

    def __init__(self):
        self.cache = {}
        self.files = []        # src = file index << 32 | line number

    def rec(self, d, src=None):
        if isinstance(d, Rec):
            return d
        vals = list(map(d.get, FIELDS))
        share = self.cache.setdefault
        for i in _SHARED_IDX:
            v = vals[i]
            if v is not None:
                vals[i] = share(v, v)
        vals.append(src)
        return Rec._make(vals)

    def where(self, src):
        if src is None:
            return None
        return "%s:%d" % (self.files[src >> 32], src & 0xFFFFFFFF)


def _norm_store(v):
    # 0 or absent is "an older broker": no id (PROTOCOL.md 7, step 6).
    if v in (None, 0, "", "0"):
        return None
    return v


# -- loading ------------------------------------------------------------

class History(list):
    """A list of Recs plus where they came from and what could not be read."""

    def __init__(self):
        super().__init__()
        self.builder = _Builder()
        self.notes = []


def _history_files(paths):
    out = []
    for p in paths:
        if os.path.isdir(p):
            for root, dirs, files in os.walk(p):
                dirs.sort()
                for f in sorted(files):
                    if f.endswith(".jsonl"):
                        out.append(os.path.join(root, f))
        else:
            out.append(p)
    return out


def load(paths):
    """Reads history files (and *.jsonl below directories) into a History.

    A line that is not JSON is skipped with a note: a client killed by the
    nemesis may leave its last line half-written, which is expected, not
    an anomaly of the system under test."""
    hist = History()
    b = hist.builder
    # raw_decode: json.loads less its two whitespace scans, a fifth of the
    # loading time.  A truncated line still raises ValueError.
    decode = json.JSONDecoder().raw_decode
    for path in _history_files(paths):
        fi = len(b.files)
        b.files.append(path)
        with open(path, "r", encoding="utf-8", errors="replace") as f:
            for ln, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    d = decode(line.lstrip())[0]
                except ValueError:
                    hist.notes.append("%s:%d: not JSON (a truncated last "
                                      "line of a killed client?), skipped"
                                      % (path, ln))
                    continue
                if not isinstance(d, dict) or "kind" not in d:
                    hist.notes.append("%s:%d: not a record, skipped"
                                      % (path, ln))
                    continue
                hist.append(b.rec(d, fi << 32 | ln))
    return hist


# -- the report ---------------------------------------------------------

class Anomaly:
    __slots__ = ("kind", "message", "records")

    def __init__(self, kind, message, records):
        self.kind = kind
        self.message = message
        # The smallest excerpt that shows it: the records involved, in time
        # order for a human; duplicates (the same record named twice) once.
        seen = set()
        uniq = []
        for r in records:
            if r is not None and id(r) not in seen:
                seen.add(id(r))
                uniq.append(r)
        self.records = sorted(uniq[:EXCERPT_MAX], key=_time_order)

    def __repr__(self):
        return "Anomaly(%s: %s)" % (self.kind, self.message)


def _time_order(r):
    # By time; within one process, equal times keep the file's order.
    return (r.t or 0.0, r.proc or "", r.src or 0)


def rec_dict(r):
    return {f: v for f, v in zip(FIELDS, r) if v is not None}


class Report:
    def __init__(self):
        self.records = 0
        self.ops = collections.Counter()       # records by kind
        self.faults = collections.Counter()    # nemesis actions started
        self.anomalies = []
        self.stats = collections.Counter()     # what was (not) checked
        self.notes = []
        self.liveness = None                   # Liveness, if requests were recorded
        self.where = lambda src: None

    @property
    def ok(self):
        return not self.anomalies

    def by_kind(self):
        c = collections.Counter(a.kind for a in self.anomalies)
        return {k: c[k] for k in ANOMALY_KINDS if c[k]}

    def to_json(self, max_per_kind=None):
        shown = collections.Counter()
        out = []
        for a in self.anomalies:
            shown[a.kind] += 1
            if max_per_kind is not None and shown[a.kind] > max_per_kind:
                continue
            recs = []
            for r in a.records:
                d = rec_dict(r)
                d.pop("src", None)
                w = self.where(r.src)
                if w:
                    d["at"] = w
                recs.append(d)
            out.append({"kind": a.kind, "message": a.message,
                        "records": recs})
        return {"ok": self.ok, "records": self.records,
                "ops": dict(sorted(self.ops.items())),
                "faults": dict(sorted(self.faults.items())),
                "anomalies_by_kind": self.by_kind(),
                "anomalies": out, "stats": dict(sorted(self.stats.items())),
                "liveness": self.liveness.to_json() if self.liveness else None,
                "notes": self.notes}

    def text(self, max_per_kind=20):
        L = ["history: %d records" % self.records]
        L.append("operations by kind:")
        for k, n in sorted(self.ops.items()):
            L.append("  %-10s %9d" % (k, n))
        L.append("faults by action:" + ("" if self.faults else " none"))
        for k, n in sorted(self.faults.items()):
            L.append("  %-10s %9d" % (k, n))
        L.append("checked:")
        for k, n in sorted(self.stats.items()):
            L.append("  %-50s %9d" % (k, n))
        if self.liveness is not None:
            L.extend(self.liveness.text())
        for n in self.notes[:20]:
            L.append("note: " + n)
        if len(self.notes) > 20:
            L.append("note: ... and %d more" % (len(self.notes) - 20))
        bk = self.by_kind()
        if not bk:
            L.append("anomalies: none")
            return "\n".join(L) + "\n"
        L.append("anomalies by kind:")
        for k, n in bk.items():
            L.append("  %-17s %9d" % (k, n))
        shown = collections.Counter()
        for a in self.anomalies:
            shown[a.kind] += 1
            if shown[a.kind] > max_per_kind:
                continue
            L.append("")
            L.append("== %s #%d: %s" % (a.kind, shown[a.kind], a.message))
            for r in a.records:
                d = rec_dict(r)
                d.pop("src", None)
                t = d.pop("t", None)
                proc = d.pop("proc", "")
                kind = d.pop("kind", "")
                for f in ("user", "dev"):
                    d.pop(f, None)
                w = self.where(r.src)
                L.append("   %17.6f %-8s %-8s %s%s" % (
                    t or 0.0, proc, kind,
                    json.dumps(d, separators=(",", ":")),
                    "   [%s]" % w if w else ""))
        for k, n in shown.items():
            if n > max_per_kind:
                L.append("")
                L.append("(%s: %d more not shown)" % (k, n - max_per_kind))
        return "\n".join(L) + "\n"


# -- the checks ---------------------------------------------------------

def _ident(r):
    # What makes two frames of one (timeline, seq) the same message.
    return (r.sender, r.cmid, r.ref_seq, (r.flags or 0) & STRUCT_FLAGS,
            r.peer_seq)


def _own(user):
    return "u/" + user if user is not None else None


class _Proc:
    """What the checker knows of one client process while reading it."""
    __slots__ = ("store", "seen", "pending", "conn")

    def __init__(self):
        self.store = None      # the store id the client keeps (7, step 6)
        self.seen = set()
        self.pending = []      # sends/acks written before any id was known
        self.conn = 0          # connection epoch: CONNECT records counted


def _effective(view):
    """The state of each seq of one client's view after applying what it
    holds (PROTOCOL.md 7, step 5): {seq: (identity..., state, body)}.

    Computed from the set of frames, not from the order they arrived in, so
    that a client that saw the original and then its edit live, and one
    that synced the original already marked EDITED, agree."""
    recalled = set()
    edits = {}                 # original seq -> (edit seq, body)
    for s, r in view.items():
        f = r.flags or 0
        if r.ref_seq is None:
            continue
        if f & H.FLAG_RECALL:
            recalled.add(r.ref_seq)
        elif f & H.FLAG_EDIT:
            e = edits.get(r.ref_seq)
            if e is None or s > e[0]:
                edits[r.ref_seq] = (s, r.body_hash)
    out = {}
    for s, r in view.items():
        f = r.flags or 0
        ident = _ident(r)
        if (f & H.FLAG_RECALLED or s in recalled
                or (f & H.FLAG_EDIT and r.ref_seq in recalled)):
            out[s] = ident + ("recalled", None)
        elif s in edits:
            out[s] = ident + ("edited", edits[s][1])
        elif f & H.FLAG_EDITED:
            out[s] = ident + ("edited", r.body_hash)
        else:
            out[s] = ident + ("plain", r.body_hash)
    return out


def check(records):
    """Checks a history; returns a Report.  See README.md for the checks."""
    if isinstance(records, History):
        recs = records
        builder = records.builder
    else:
        builder = _Builder()
        recs = [builder.rec(d) for d in records]
    rep = Report()
    rep.where = builder.where
    if isinstance(records, History):
        rep.notes.extend(records.notes)
    rep.records = len(recs)
    add = rep.anomalies.append
    st = rep.stats

    procs = collections.defaultdict(_Proc)
    epoch_of = {}              # id(send/ack/receipt rec) -> store epoch
    sends = collections.defaultdict(list)      # (user, cmid) -> sends
    acks = collections.defaultdict(list)       # (user, cmid) -> acks
    receipts = collections.defaultdict(list)   # (user, cmid) -> receipts
    # (epoch, timeline) -> {seq: first frame seen there}
    first = collections.defaultdict(dict)
    # (epoch, timeline) -> {seq: first frame with no EDITED/RECALLED}
    plain = collections.defaultdict(dict)
    # (epoch, timeline) -> {seq: [frames marked EDITED/RECALLED, one per body]}
    later = collections.defaultdict(dict)
    # (epoch, timeline, proc) -> {seq: the latest frame that proc got}
    views = collections.defaultdict(dict)
    # (epoch, timeline) -> {proc: final record}
    finals = collections.defaultdict(dict)
    # (epoch, timeline) -> the highest first_seq any client was told
    first_seq = {}
    # (proc, connection epoch, timeline, epoch) -> the highest live frame
    live_last = {}
    facts = collections.defaultdict(list)      # (reader, group) -> may_read
    moderators = collections.defaultdict(set)  # group -> users
    conflicts = {}             # (epoch, tl, seq) -> (frame, frame): once
    extra_locs = []            # identities that lost a seq to a conflict
    epochs = set()

    def learn(p, sid):
        # A client keeps the newest store id it has seen; an old id seen
        # again (a late delivery of a persistent session) changes nothing.
        if sid is not None and sid not in p.seen:
            p.seen.add(sid)
            p.store = sid
            epochs.add(sid)
            for r in p.pending:
                epoch_of[id(r)] = sid
            p.pending.clear()

    def place(p, r):
        # A send or an ack carries no store id: it happened in the epoch
        # its client knew then, or, before it knew any, the first it learns.
        if p.store is None:
            p.pending.append(r)
        epoch_of[id(r)] = p.store

    # ---- one pass, each process's records in its own order ----
    for r in recs:
        kind = r.kind
        rep.ops[kind] += 1
        p = procs[r.proc]
        if kind in H.FRAME_KINDS:
            seq = r.seq
            if not seq or seq < 0:
                st["frames ignored (seq 0: events)"] += 1
                continue
            sid = _norm_store(r.store_id)
            learn(p, sid)
            ep = sid if sid is not None else p.store
            tl = r.timeline
            if tl is None or r.sender is None:
                rep.notes.append("%s: a frame without timeline or sender, "
                                 "skipped" % (builder.where(r.src) or r.proc))
                continue
            key = (ep, tl)
            # unauthorised, inboxes: the rule is fixed (PROTOCOL.md 2).
            if tl.startswith("u/") and tl[2:] != r.user:
                add(Anomaly(UNAUTHORISED, "%s (user %s) received a frame "
                            "of %s" % (r.proc, r.user, tl), [r]))
            # conflict: every copy of one (timeline, seq) is one message.
            fm = first[key]
            f0 = fm.get(seq)
            if f0 is None:
                fm[seq] = r
            elif _ident(f0) != _ident(r):
                ck = (ep, tl, seq)
                if ck not in conflicts:
                    conflicts[ck] = (f0, r)
                    extra_locs.append((ep, tl, seq, r))
            flags = r.flags or 0
            if flags & LATER_FLAGS:
                bodies = later[key].setdefault(seq, [])
                if all(b.body_hash != r.body_hash for b in bodies):
                    bodies.append(r)
            elif r.body_hash is not None:
                pm = plain[key]
                p0 = pm.get(seq)
                if p0 is None:
                    pm[seq] = r
                elif p0.body_hash != r.body_hash:
                    ck = (ep, tl, seq, "body")
                    if ck not in conflicts:
                        conflicts[ck] = (p0, r)
            # The client's view: the latest copy of each seq it received.
            views[(ep, tl, r.proc)][seq] = r
            # order: live frames of one timeline strictly increase within
            # one connection (PROTOCOL.md 5.1): a repeat is a violation too.
            if kind == H.LIVE:
                ok = (r.proc, p.conn, tl, ep)
                last = live_last.get(ok)
                if last is not None and seq <= last.seq:
                    add(Anomaly(ORDER, "%s got %s seq %d live after seq %d "
                                "on one connection" % (r.proc, tl, seq,
                                                       last.seq), [last, r]))
                else:
                    live_last[ok] = r
        elif kind in H.SEND_KINDS:
            sends[(r.user, r.cmid)].append(r)
            place(p, r)
        elif kind == H.ACK:
            acks[(r.user, r.cmid)].append(r)
            place(p, r)
        elif kind == H.RECEIPT:
            sid = _norm_store(r.store_id)
            learn(p, sid)
            if sid is not None:
                epoch_of[id(r)] = sid
            else:
                place(p, r)
            receipts[(r.user, r.cmid)].append(r)
        elif kind == H.HEAD or kind == H.FINAL:
            sid = _norm_store(r.store_id)
            learn(p, sid)
            ep = sid if sid is not None else p.store
            key = (ep, r.timeline)
            if r.first_seq is not None:
                first_seq[key] = max(first_seq.get(key, 1), r.first_seq)
            if kind == H.FINAL:
                finals[key][r.proc] = r
        elif kind == H.CONNECT:
            p.conn += 1
        elif kind == H.MAY_READ:
            reader = r.reader if r.reader is not None else r.user
            facts[(reader, r.timeline)].append(r)
            if r.moderator:
                moderators[r.timeline].add(reader)
        elif kind == H.FAULT:
            if r.phase != "end":
                rep.faults[r.action] += 1

    # Sends and acks of a client that never learnt a store id: if the
    # whole run had one store, they were in it.
    only = next(iter(epochs)) if len(epochs) == 1 else None
    for p in procs.values():
        for r in p.pending:
            epoch_of[id(r)] = only
    st["store epochs"] = len(epochs)
    st["processes"] = len(procs)

    # ---- where each (sender, cmid) was stored, per epoch ----
    locs = collections.defaultdict(dict)   # (ep, sender, cmid) -> {tl: {seq: rec}}
    for (ep, tl), fm in first.items():
        for seq, r in fm.items():
            if r.cmid is not None:
                locs[(ep, r.sender, r.cmid)].setdefault(tl, {})[seq] = r
    for ep, tl, seq, r in extra_locs:
        if r.cmid is not None:
            locs[(ep, r.sender, r.cmid)].setdefault(tl, {}).setdefault(seq, r)

    # ---- conflict ----
    for ck, (a, b) in conflicts.items():
        ep, tl, seq = ck[0], ck[1], ck[2]
        if len(ck) == 3:
            add(Anomaly(CONFLICT, "%s seq %d (store %s) holds two messages: "
                        "%s/%s and %s/%s" % (tl, seq, ep, a.sender, a.cmid,
                                             b.sender, b.cmid), [a, b]))
        else:
            add(Anomaly(CONFLICT, "%s seq %d (store %s): two bodies, "
                        "neither marked EDITED or RECALLED" % (tl, seq, ep),
                        [a, b]))
    # A plain copy must hold a body its sender sent with that cmid.
    for (ep, tl), pm in plain.items():
        for seq, r in pm.items():
            if r.cmid is None:
                continue
            ss = sends.get((r.sender, r.cmid))
            if not ss:
                continue
            hashes = {s.body_hash for s in ss if s.body_hash is not None}
            if hashes and r.body_hash not in hashes:
                add(Anomaly(CONFLICT, "%s seq %d (store %s): body of %s/%s "
                            "differs from every send of it" % (
                                tl, seq, ep, r.sender, r.cmid),
                            [r] + ss[:4]))

    # ---- duplicated ----
    for (ep, sender, cmid), tls in locs.items():
        bad = [tl for tl, seqs in tls.items() if len(seqs) > 1]
        others = [tl for tl in tls if tl != _own(sender)]
        if len(others) > 1 or (others and others[0].startswith("g/")
                               and _own(sender) in tls):
            bad = list(tls)
        if bad:
            where = ", ".join("%s:%s" % (tl, sorted(tls[tl])) for tl in
                              sorted(tls))
            ex = [r for tl in bad for r in tls[tl].values()]
            add(Anomaly(DUPLICATED, "%s/%s stored more than once (store %s):"
                        " %s" % (sender, cmid, ep, where), ex))

    # ---- edits and recalls ----
    # (ep, tl) -> {original seq: [edit frames]} / {original seq: min recall seq}
    edits_of = collections.defaultdict(lambda: collections.defaultdict(list))
    recall_of = collections.defaultdict(dict)
    change_frames = []
    for key, fm in first.items():
        for seq, r in fm.items():
            f = r.flags or 0
            if f & CHANGE_FLAGS and r.ref_seq is not None:
                change_frames.append((key, r))
                if f & H.FLAG_EDIT:
                    edits_of[key][r.ref_seq].append(r)
                else:
                    rm = recall_of[key]
                    if r.ref_seq not in rm or seq < rm[r.ref_seq]:
                        rm[r.ref_seq] = seq
    pair = collections.defaultdict(list)   # (ep, sender, cmid) -> [(frame, target)]
    for key, r in change_frames:
        ep, tl = key
        f = r.flags or 0
        what = "edit" if f & H.FLAG_EDIT else "recall"
        ref = r.ref_seq
        if ref >= r.seq:
            add(Anomaly(EDIT_TARGET, "%s %s seq %d names seq %d, not an "
                        "earlier one" % (tl, what, r.seq, ref), [r]))
            continue
        tgt = first[key].get(ref)
        if tgt is None:
            # Never seen: below first_seq, or a gap reported as such.
            st["edits/recalls with an unseen target"] += 1
            continue
        tf = tgt.flags or 0
        why = None
        if tf & H.FLAG_SYSTEM:
            why = "a system message"
        elif tf & CHANGE_FLAGS:
            why = "an edit or recall"
        elif what == "edit" and tgt.sender != r.sender:
            why = "a message of %s, not of its sender %s" % (tgt.sender,
                                                             r.sender)
        elif (what == "recall" and tgt.sender != r.sender
              and not (tl.startswith("g/") and r.sender in moderators[tl])):
            why = "a message of %s, and %s is not its sender, the group's " \
                  "owner or an admin" % (tgt.sender, r.sender)
        elif recall_of[key].get(ref, r.seq) < r.seq:
            why = "a message recalled before (seq %d)" % recall_of[key][ref]
        if why:
            add(Anomaly(EDIT_TARGET, "%s %s seq %d (store %s) names seq %d: "
                        "%s" % (tl, what, r.seq, ep, ref, why), [r, tgt]))
        if r.cmid is not None:
            pair[(ep, r.sender, r.cmid)].append((r, tgt))
        # The frame must change what its sender asked to change (the send
        # names the seq in the timeline it addressed).
        for s in sends.get((r.sender, r.cmid), ()):
            if (s.kind in (H.EDIT, H.RECALL) and s.to == tl
                    and s.ref_seq is not None and s.ref_seq != ref):
                add(Anomaly(EDIT_TARGET, "%s %s seq %d names seq %d, its "
                            "sender asked for seq %d" % (tl, what, r.seq, ref,
                                                        s.ref_seq), [s, r]))
                break
    # A direct message's edit is stored in both inboxes: both copies must
    # change the same message.
    for (ep, sender, cmid), lst in pair.items():
        ids = {(t.sender, t.cmid) for _, t in lst}
        if len(ids) > 1:
            add(Anomaly(EDIT_TARGET, "%s/%s (store %s) changes different "
                        "messages in its copies: %s" % (
                            sender, cmid, ep, sorted(map(str, ids))),
                        [x for rt in lst for x in rt]))

    # ---- the final views ----
    for key, fprocs in sorted(finals.items(), key=lambda kv: str(kv[0])):
        ep, tl = key
        P = sorted(fprocs)
        st["timelines with a final view"] += 1
        fr = [fprocs[p] for p in P]
        head = max((f.head_seq or 0) for f in fr)
        low = first_seq.get(key, 1)
        pviews = [views.get((ep, tl, p), {}) for p in P]
        union = set()
        for v in pviews:
            union.update(v)
        fm = first.get(key, {})
        # gap: a seq of [first_seq, head_seq] in no final client's view.
        run = None
        gaps = []
        for s in range(low, head + 2):
            if s <= head and s not in union:
                run = (run[0], s) if run else (s, s)
            elif run:
                gaps.append(run)
                run = None
        for a, b in gaps:
            ex = [fm.get(a - 1), fm.get(b + 1)] + fr
            add(Anomaly(GAP, "%s (store %s): seq %s in no final view "
                        "(first_seq %d, head_seq %d, final views of %s)" % (
                            tl, ep, a if a == b else "%d..%d" % (a, b), low,
                            head, ",".join(P)), ex))
        # lost, the stored kind: a frame delivered during the run above
        # the head the final syncs found.
        above = sorted(s for s in fm if s > head)
        if above:
            add(Anomaly(LOST, "%s (store %s): seq %s delivered during the "
                        "run, above the final head_seq %d" % (
                            tl, ep, above if len(above) < 8 else
                            "%d..%d (%d seqs)" % (above[0], above[-1],
                                                  len(above)), head),
                        [fm[s] for s in above[:6]] + fr[:4]))
        # final_diverges: every final client holds the same thing at each
        # seq both cover.  Who deviates is decided by majority, so one bad
        # client makes one anomaly, not one per other client.
        if len(P) > 1:
            effs = [_effective(v) for v in pviews]
            heads = [f.head_seq or 0 for f in fr]
            diffs = collections.defaultdict(list)   # proc index -> seqs
            for s in range(low, head + 1):
                vals = [effs[i].get(s) for i in range(len(P)) if s <= heads[i]]
                if len(vals) < 2 or all(x == vals[0] for x in vals):
                    continue
                c = collections.Counter(vals)
                top = max(c.values())
                major = next(x for x in vals if c[x] == top)
                for i in range(len(P)):
                    if s <= heads[i] and effs[i].get(s) != major:
                        diffs[i].append((s, major))
            for i, lst in sorted(diffs.items()):
                ex = [fr[i]]
                for s, major in lst[:4]:
                    ex.append(pviews[i].get(s))
                    j = next(j for j in range(len(P)) if j != i
                             and effs[j].get(s) == major)
                    ex.append(pviews[j].get(s))
                    ex.append(fr[j])
                add(Anomaly(FINAL_DIVERGES, "%s (store %s): the final view "
                            "of %s differs from the others at %d seq(s): %s"
                            % (tl, ep, P[i], len(lst),
                               [s for s, _ in lst[:10]]), ex))
        # edit_target, second half: an original shown EDITED or RECALLED
        # needs the edit or recall that did it.  Only where a final view
        # exists: elsewhere nobody may have read that frame.
        eo = edits_of.get(key, {})
        ro = recall_of.get(key, {})
        for seq, lst in later.get(key, {}).items():
            for r in lst:
                f = r.flags or 0
                if f & H.FLAG_RECALLED:
                    tgt = r.ref_seq if f & H.FLAG_EDIT else seq
                    if tgt not in ro:
                        add(Anomaly(EDIT_TARGET, "%s seq %d (store %s) is "
                                    "RECALLED but no recall names seq %s" % (
                                        tl, seq, ep, tgt), [r]))
                        break
                elif f & H.FLAG_EDITED and seq not in eo:
                    add(Anomaly(EDIT_TARGET, "%s seq %d (store %s) is EDITED"
                                " but no edit names it" % (tl, seq, ep), [r]))
                    break

    # conflict, the edited kind: a copy marked EDITED holds the body of an
    # edit of it (the edit frame's, or what its sender sent under its cmid:
    # the edit frame's own body is erased by a later recall).
    for key, lm in later.items():
        eo = edits_of.get(key, {})
        for seq, lst in lm.items():
            es = eo.get(seq)
            for r in lst:
                f = r.flags or 0
                if f & H.FLAG_RECALLED:
                    if r.body_hash not in (None, H.EMPTY_BODY_HASH):
                        add(Anomaly(CONFLICT, "%s seq %d (store %s) is "
                                    "RECALLED but has a body" % (
                                        key[1], seq, key[0]), [r]))
                    continue
                if not es or r.body_hash is None:
                    continue
                ok = set()
                for e in es:
                    pe = plain.get(key, {}).get(e.seq)
                    if pe is not None:
                        ok.add(pe.body_hash)
                    for s in sends.get((e.sender, e.cmid), ()):
                        ok.add(s.body_hash)
                if r.body_hash not in ok:
                    add(Anomaly(CONFLICT, "%s seq %d (store %s) is EDITED "
                                "with a body no edit of it has" % (
                                    key[1], seq, key[0]), [r] + es[:4]))

    # ---- lost: acknowledged messages missing from the final view ----
    present = {}           # (ep, tl) -> {(sender, cmid)}, final views only
    for key, fprocs in finals.items():
        ids = set()
        for p in fprocs:
            for r in views.get((key[0], key[1], p), {}).values():
                if r.cmid is not None:
                    ids.add((r.sender, r.cmid))
        present[key] = ids
    final_epochs = {ep for ep, _ in finals}
    for k in set(acks) | set(receipts):
        user, cmid = k
        if cmid is None:
            st["acknowledged without cmid (not checked)"] += 1
            continue
        rs = receipts.get(k, [])
        okr = [r for r in rs if r.status in (0, None) and r.seq is not None]
        if not okr and not acks.get(k):
            continue                   # only refusals: nothing promised
        st["acknowledged messages"] += 1
        if not okr and rs:
            # Refused after the acknowledgement (FORBIDDEN, TOO_MANY, an
            # edit's NOT_FOUND...): PROTOCOL.md 3.1 and 11.2 allow it.
            st["acknowledged, then refused (not checked)"] += 1
            continue
        ss = sends.get(k, [])
        # Where it must be: the Receipt's timeline, else where it was sent.
        expect = []        # [(epoch, [timelines: present in one suffices])]
        if okr:
            for ep in {epoch_of.get(id(r)) for r in okr}:
                mine = [r for r in okr if epoch_of.get(id(r)) == ep]
                # Below the first_seq the final syncs were told: removed by
                # retention, which the protocol allows (6.1).
                if any(r.seq < first_seq.get((ep, r.timeline), 1)
                       for r in mine):
                    st["acknowledged, then trimmed (not checked)"] += 1
                    continue
                expect.append((ep, sorted({r.timeline for r in mine})))
        else:
            ep = epoch_of.get(id(acks[k][0]))
            tls = sorted({s.to for s in ss if s.to})
            if tls:
                expect.append((ep, tls))
        own = _own(user)
        for ep, tls in list(expect):
            dm = [tl for tl in tls if tl.startswith("u/") and tl != own]
            if dm:
                expect.append((ep, [own]))   # the sender's own copy
        if not expect:
            if not okr:
                st["acknowledged, no send recorded (not checked)"] += 1
            continue
        for ep, tls in expect:
            known = [tl for tl in tls if (ep, tl) in present]
            if ep not in final_epochs:
                st["copies due: store replaced later (not checked)"] += 1
                continue
            if len(known) < len(tls):
                st["copies due: no final view (not checked)"] += 1
                continue
            if any((user, cmid) in present[(ep, tl)] for tl in tls):
                st["copies due: found in the final view"] += 1
                continue
            ex = ss[:3] + acks.get(k, [])[:2] + okr[:2]
            ex += [next(iter(finals[(ep, tl)].values())) for tl in tls]
            add(Anomaly(LOST, "%s/%s acknowledged but not in the final view"
                        " of %s (store %s)" % (user, cmid, " or ".join(tls),
                                               ep), ex))

    # ---- receipt_mismatch ----
    for k, rs in receipts.items():
        user, cmid = k
        if cmid is None:
            continue
        okr = [r for r in rs if r.status in (0, None) and r.seq is not None]
        byep = collections.defaultdict(list)
        for r in okr:
            byep[epoch_of.get(id(r))].append(r)
        for ep, lst in byep.items():
            places = {(r.timeline, r.seq) for r in lst}
            owns = {r.own_seq for r in lst if r.own_seq is not None}
            if len(places) > 1 or len(owns) > 1:
                add(Anomaly(RECEIPT_MISMATCH, "receipts of %s/%s (store %s) "
                            "disagree: %s%s" % (user, cmid, ep,
                                                sorted(places, key=str),
                                                " own_seq %s" % sorted(owns)
                                                if len(owns) > 1 else ""),
                            lst))
                continue
            r = lst[0]
            loc = locs.get((ep, user, cmid))
            if not loc:
                continue               # never seen: lost decides
            why = None
            if r.timeline in loc:
                if r.seq not in loc[r.timeline]:
                    why = "%s seq %d, frames show seq %s" % (
                        r.timeline, r.seq, sorted(loc[r.timeline]))
            elif any(tl != _own(user) for tl in loc):
                why = "%s seq %d, frames show it in %s" % (
                    r.timeline, r.seq, sorted(loc))
            own = _own(user)
            if (why is None and r.own_seq is not None and own in loc
                    and r.own_seq not in loc[own]):
                why = "own_seq %d, frames show %s seq %s" % (
                    r.own_seq, own, sorted(loc[own]))
            if why:
                ex = lst[:2] + [x for tl in sorted(loc) for x in
                                list(loc[tl].values())[:2]]
                add(Anomaly(RECEIPT_MISMATCH, "receipt of %s/%s (store %s) "
                            "says %s" % (user, cmid, ep, why), ex))

    # ---- unauthorised, groups: checked against may_read facts ----
    if facts:
        for fl in facts.values():
            fl.sort(key=lambda r: r.t or 0.0)
        for r in recs:
            if r.kind not in H.FRAME_KINDS or not r.seq:
                continue
            fl = facts.get((r.user, r.timeline))
            if not fl:
                continue
            bad = _forbidden(r, fl, procs)
            if bad is not None:
                add(Anomaly(UNAUTHORISED, "%s (user %s) received %s seq %d "
                            "while it may not read it" % (
                                r.proc, r.user, r.timeline, r.seq),
                            [bad, r]))
    if rep.ops[H.REQUEST]:
        rep.liveness = liveness(recs)
    return rep


# -- liveness -----------------------------------------------------------

STALL_S = 10.0          # a request unanswered this long on a live connection


class Wait:
    """One request: how long its client waited, on the connection it was
    sent on, and what the nemesis was doing meanwhile."""
    __slots__ = ("req", "reply", "start", "end", "why", "broker", "faults")

    def __init__(self, req, reply, end, why, broker):
        self.req = req
        self.reply = reply
        self.start = req.t or 0.0
        self.end = end
        self.why = why          # "answered", "reconnected", "end of history"
        self.broker = broker
        self.faults = []

    @property
    def seconds(self):
        return max(0.0, self.end - self.start)


class Liveness:
    """How long the plugin took to answer requests, and where it was
    silent.  Not anomalies: the promise of PROTOCOL.md is about what is
    stored and delivered, not when; a runner decides what it tolerates
    (run.py prints it, and fails only with --max-silence)."""

    def __init__(self, waits, threshold):
        self.waits = waits
        self.threshold = threshold
        self.stalls = sorted((w for w in waits if w.seconds >= threshold),
                             key=lambda w: -w.seconds)

    def longest(self):
        return max((w.seconds for w in self.waits), default=0.0)

    def _latencies(self):
        return sorted(w.seconds for w in self.waits if w.why == "answered")

    def summary(self):
        lat = self._latencies()

        def pct(q):
            return lat[min(len(lat) - 1, int(q * len(lat)))] if lat else None
        return {"requests": len(self.waits),
                "answered": len(lat),
                "unanswered_reconnected": sum(w.why == "reconnected"
                                              for w in self.waits),
                "unanswered_at_end": sum(w.why == "end of history"
                                         for w in self.waits),
                "p50_s": pct(0.5), "p99_s": pct(0.99),
                "max_answered_s": lat[-1] if lat else None,
                "stall_threshold_s": self.threshold,
                "stalls": len(self.stalls),
                "longest_stall_s": self.stalls[0].seconds
                if self.stalls else 0.0}

    def _wait_json(self, w):
        return {"proc": w.req.proc, "rid": w.req.rid, "op": w.req.op,
                "broker": w.broker, "t": w.start,
                "seconds": round(w.seconds, 3), "ended": w.why,
                "faults": ["%s %s" % f for f in w.faults]}

    def to_json(self):
        d = self.summary()
        d["longest"] = [self._wait_json(w) for w in self.stalls[:10]]
        return d

    def text(self):
        s = self.summary()
        L = ["liveness: %d requests, %d answered (p50 %s, p99 %s, max %s), "
             "%d unanswered before a reconnect, %d at the end" % (
                 s["requests"], s["answered"], _secs(s["p50_s"]),
                 _secs(s["p99_s"]), _secs(s["max_answered_s"]),
                 s["unanswered_reconnected"], s["unanswered_at_end"])]
        L.append("  stalls (a request waited %.0f s or more on one "
                 "connection): %d%s" % (
                     self.threshold, s["stalls"],
                     ", the longest %.1f s" % s["longest_stall_s"]
                     if self.stalls else ""))
        for w in self.stalls[:5]:
            L.append("    %.1f s  %s %s %s on %s, %s; faults meanwhile: %s" % (
                w.seconds, w.req.proc, w.req.op, w.req.rid, w.broker, w.why,
                ", ".join("%s %s" % f for f in w.faults) or "none"))
        return L


def _secs(v):
    return "-" if v is None else "%.3f s" % v


def liveness(recs, threshold=STALL_S):
    """Pairs each `request` with its `reply` (same process and rid).  A
    request's wait ends at its reply, at its process's next `connect` (the
    connection it was sent on is gone; the client asks again on the new
    one), or at the process's last record.  Each wait is annotated with
    the faults that overlapped it."""
    by_proc = collections.defaultdict(list)
    for r in recs:
        by_proc[r.proc].append(r)
    fault_iv = []               # (start, end, action, target)
    open_f = {}
    t_last = max((r.t or 0.0) for r in recs) if recs else 0.0
    for r in recs:
        if r.kind != H.FAULT:
            continue
        k = (r.action, r.target)
        if r.phase == "start":
            open_f.setdefault(k, []).append(r.t or 0.0)
        elif open_f.get(k):
            fault_iv.append((open_f[k].pop(0), r.t or 0.0) + k)
    for k, ts in open_f.items():
        for t0 in ts:
            fault_iv.append((t0, t_last) + k)
    waits = []
    for proc, rs in by_proc.items():
        broker = None
        open_req = {}           # rid -> (request, broker)
        end_t = rs[-1].t or 0.0
        for r in rs:
            if r.kind == H.CONNECT:
                for req, b in open_req.values():
                    waits.append(Wait(req, None, r.t or 0.0, "reconnected", b))
                open_req.clear()
                broker = r.broker
            elif r.kind == H.REQUEST and r.rid is not None:
                open_req[r.rid] = (r, broker)
            elif r.kind == H.REPLY and r.rid in open_req:
                req, b = open_req.pop(r.rid)
                waits.append(Wait(req, r, r.t or 0.0, "answered", b))
        for req, b in open_req.values():
            waits.append(Wait(req, None, end_t, "end of history", b))
    live = Liveness(waits, threshold)
    for w in live.stalls[:50]:
        w.faults = sorted({(a, tg) for (s0, s1, a, tg) in fault_iv
                           if s0 < w.end and s1 > w.start}, key=str)
    return live


def _forbidden(r, fl, procs):
    """The may_read fact that forbids frame r to its reader, or None.

    A removal with a seq (that of its system message) forbids every frame
    above that seq, whenever it arrives, until the reader is allowed again:
    such a frame was stored after the removal, so it was delivered or
    synced after it.  A removal without a seq forbids what arrives after it
    was recorded.  An allowed fact counts from when it was recorded (write
    it before sending the add request)."""
    T = r.t or 0.0
    sid = _norm_store(r.store_id)
    for i, f in enumerate(fl):
        if f.allowed:
            continue
        if f.seq is not None:
            fs = _norm_store(f.store_id)
            if fs is not None and sid is not None and fs != sid:
                continue
            if r.seq <= f.seq:
                continue
        elif (f.t or 0.0) > T:
            continue
        # Allowed again between the removal and this frame?
        again = any(g.allowed and (f.t or 0.0) < (g.t or 0.0) <= T
                    for g in fl[i + 1:])
        if not again:
            return f
    return None


def main(argv=None):
    ap = argparse.ArgumentParser(
        description="Check a nemesis history (JSONL files) for anomalies.")
    ap.add_argument("paths", nargs="+", metavar="HISTORY_DIR_OR_FILE")
    ap.add_argument("--json", action="store_true",
                    help="print the report as JSON")
    ap.add_argument("--max-per-kind", type=int, default=20,
                    help="anomalies shown per kind (default 20)")
    a = ap.parse_args(argv)
    try:
        hist = load(a.paths)
    except OSError as e:
        print("checker: %s" % e, file=sys.stderr)
        return 2
    if not hist:
        print("checker: no records in %s" % " ".join(a.paths),
              file=sys.stderr)
        return 2
    rep = check(hist)
    if a.json:
        json.dump(rep.to_json(a.max_per_kind), sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(rep.text(a.max_per_kind))
    return 0 if rep.ok else 1


if __name__ == "__main__":
    sys.exit(main())
