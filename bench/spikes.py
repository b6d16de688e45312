#!/usr/bin/python3
"""bench/spikes.py OUT_DIR: reads what bench/spikes.sh left in OUT_DIR and
says, per run, how slow the slowest messages were, and per slow episode
what the plugin's metrics and the brokers' slow system calls of that moment
were.

Files (all stamps CLOCK_MONOTONIC µs unless said):
  results.txt            "<mode> <round> RESULT ..." (imbench)
  lat-<mode>-r<N>.txt    "sent_us latency_us pair idx", arrival order
  metrics-<mode>.txt     "<unix time, ns> <$SYS/broker/im/stats JSON>"
  clock-offset           CLOCK_REALTIME - CLOCK_MONOTONIC, seconds
  trace-<mode>.txt       perf trace -T output (ms, CLOCK_MONOTONIC)
  threads-<mode>.txt     "<tid> <comm>" of the broker's threads
  sched.txt.gz           perf script of sched:sched_switch, whole machine

An episode: messages slower than --slow-ms whose send times are within
--merge-ms of each other. Its window runs from the first such message's
send time to the last one's arrival.
"""
import argparse
import collections
import gzip
import json
import os
import re
import statistics
import sys


def pct(sorted_vals, q):
    if not sorted_vals:
        return 0
    return sorted_vals[min(len(sorted_vals) - 1, int(q * (len(sorted_vals) - 1) + 0.5))]


def safe(mode):
    return re.sub(r"[^A-Za-z0-9_.-]", "_", mode)


def read_lat(path):
    recs = []
    with open(path) as f:
        for line in f:
            p = line.split()
            if len(p) >= 2:
                recs.append((int(p[0]), int(p[1])))
    return recs


def read_metrics(path, offset_s):
    out = []
    if not os.path.exists(path):
        return out
    with open(path) as f:
        for line in f:
            try:
                t, js = line.split(" ", 1)
                out.append(((float(t) - offset_s) * 1e6, json.loads(js)))
            except ValueError:
                continue
    return out


TRACE_RE = re.compile(r"^\s*([0-9.]+) \(\s*([0-9.]+) ms\): (\S+?)/(\d+) (\w+)\((.*)\)\s*=\s*(.*)$")


def read_trace(path):
    out = []
    if not os.path.exists(path):
        return out
    with open(path) as f:
        for line in f:
            m = TRACE_RE.match(line)
            if not m:
                continue
            end_us = float(m.group(1)) * 1000 + float(m.group(2)) * 1000
            out.append({"start_us": float(m.group(1)) * 1000, "end_us": end_us, "ms": float(m.group(2)),
                        "tid": int(m.group(4)), "call": m.group(5), "args": m.group(6)[:80], "ret": m.group(7).strip()})
    return out


WK_RE = re.compile(r"\[(\d+)\]\s+([0-9.]+): comm=(.*?) pid=(\d+) prio=\d+ target_cpu=")
SW_RE = re.compile(r"\[(\d+)\]\s+([0-9.]+): prev_comm=(.*?) prev_pid=(\d+) prev_prio=\d+ prev_state=(\S+) ==> next_comm=(.*?) next_pid=(\d+)")


class Sched:
    """Context switches of the whole machine: per thread its off-CPU
    stretches (with the state it left in: R = preempted, waiting for a CPU;
    S = asleep, waiting for an event; D = in the kernel, waiting for I/O or
    a lock; and when it was woken, if sched_wakeup was recorded: from then
    on it waited for a CPU), and per window who had the CPUs."""

    def __init__(self, path, tids, comms=("imbench",)):
        self.off = collections.defaultdict(list)   # tid -> [(off_us, on_us, state)]
        self.named = {}                            # tid -> comm, for the threads followed by name
        self.runs = []                             # (start_us, end_us, cpu, comm, pid)
        left = {}
        running = {}
        woken = {}
        with gzip.open(path, "rt", errors="replace") as f:
            for line in f:
                m = SW_RE.search(line)
                if not m:
                    w = WK_RE.search(line)
                    if w and int(w.group(4)) in left and int(w.group(4)) not in woken:
                        woken[int(w.group(4))] = float(w.group(2)) * 1e6
                    continue
                cpu, t = int(m.group(1)), float(m.group(2)) * 1e6
                prev_comm, prev, state, next_comm, nxt = m.group(3), int(m.group(4)), m.group(5), m.group(6), int(m.group(7))
                if cpu in running:
                    st, comm, pid = running[cpu]
                    self.runs.append((st, t, cpu, comm, pid))
                running[cpu] = (t, next_comm, nxt)
                if next_comm in comms:
                    self.named[nxt] = next_comm
                if prev in tids or prev_comm in comms:
                    left[prev] = (t, state)
                    woken.pop(prev, None)
                if (nxt in tids or next_comm in comms) and nxt in left:
                    t0, st0 = left.pop(nxt)
                    wk = woken.pop(nxt, None)
                    if st0[0] in "SD" and wk is not None and wk < t:
                        # Asleep until wk, then waiting for a CPU ("W").
                        if wk > t0:
                            self.off[nxt].append((t0, wk, st0))
                        self.off[nxt].append((max(t0, wk), t, "W"))
                    else:
                        self.off[nxt].append((t0, t, st0))

    def gaps(self, tid, w0, w1, min_us):
        return [g for g in self.off.get(tid, []) if g[1] >= w0 and g[0] <= w1 and g[1] - g[0] >= min_us]

    def waited(self, tid, w0, w1):
        """Time tid spent off CPU in the window, by the state it left in
        (R: runnable, waiting for a CPU)."""
        by = collections.Counter()
        for g0, g1, st in self.off.get(tid, []):
            if g1 >= w0 and g0 <= w1:
                by[st[0]] += min(g1, w1) - max(g0, w0)
        return by

    def busy(self, w0, w1):
        by = collections.Counter()
        for st, en, cpu, comm, pid in self.runs:
            if en < w0 or st > w1 or pid == 0:
                continue
            by["%s/%d" % (comm, pid)] += min(en, w1) - max(st, w0)
        return by


def read_dstacks(path):
    """tid -> [(time_us, [frames])]: where each switch into D happened."""
    out = collections.defaultdict(list)
    if not os.path.exists(path):
        return out
    cur = None
    with gzip.open(path, "rt", errors="replace") as f:
        for line in f:
            if not line.strip():
                cur = None
                continue
            if not line.startswith(("\t", " " * 8)) or ":" in line.split()[-1]:
                p = line.split()
                try:
                    cur = (int(p[0]), float(p[1].rstrip(":")) * 1e6, [])
                except (ValueError, IndexError):
                    cur = None
                    continue
                out[cur[0]].append((cur[1], cur[2]))
            elif cur is not None:
                p = line.split(None, 1)
                if len(p) == 2 and p[1].strip() not in ("[unknown]",):
                    cur[2].append(p[1].strip())
    return out


SKIP = ("__schedule", "schedule", "io_schedule", "schedule_timeout", "schedule_preempt_disabled")


def episodes(recs, slow_us, merge_us):
    eps = []
    for sent, lat in sorted(recs):
        if lat < slow_us:
            continue
        if eps and sent - eps[-1]["last_sent"] <= merge_us:
            e = eps[-1]
            e["n"] += 1
            e["max"] = max(e["max"], lat)
            e["last_sent"] = sent
            e["end"] = max(e["end"], sent + lat)
        else:
            eps.append({"first_sent": sent, "last_sent": sent, "end": sent + lat, "n": 1, "max": lat})
    return eps


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--slow-ms", type=float, default=20)
    ap.add_argument("--merge-ms", type=float, default=200)
    ap.add_argument("--max-episodes", type=int, default=6)
    a = ap.parse_args()
    out = a.out
    offset = float(open(os.path.join(out, "clock-offset")).read().strip())
    results = []
    with open(os.path.join(out, "results.txt")) as f:
        for line in f:
            p = line.split()
            if len(p) >= 2:
                results.append((p[0], int(p[1]), line))
    modes = []
    for m, _, _ in results:
        if m not in modes:
            modes.append(m)
    per_mode = {m: [] for m in modes}
    threads = {}
    for m in modes:
        tf = os.path.join(out, "threads-%s.txt" % safe(m))
        if os.path.exists(tf):
            rows = [l.split() for l in open(tf) if l.strip()]
            main_tid = min(int(r[0]) for r in rows) if rows else None
            threads[m] = {int(r[0]): ("broker" if int(r[0]) == main_tid else "plugin-%d" % i) for i, r in enumerate(rows)}
    metrics = {m: read_metrics(os.path.join(out, "metrics-%s.txt" % safe(m)), offset) for m in modes}
    traces = {m: read_trace(os.path.join(out, "trace-%s.txt" % safe(m))) for m in modes}
    dstacks = read_dstacks(os.path.join(out, "dstacks.txt.gz"))
    sched = None
    if os.path.exists(os.path.join(out, "sched.txt.gz")):
        sched = Sched(os.path.join(out, "sched.txt.gz"), {t for m in threads for t in threads[m]})

    print("# Runs (latency µs; 'slow' = messages over %g ms; episodes: slow messages within %g ms of each other)"
          % (a.slow_ms, a.merge_ms))
    print("| mode | round | p50 | p99 | p99.9 | max | slow | episodes (start s: msgs, max ms) |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    detail = []
    for m, r, _ in results:
        path = os.path.join(out, "lat-%s-r%d.txt" % (safe(m), r))
        if not os.path.exists(path):
            continue
        recs = read_lat(path)
        if not recs:
            continue
        lats = sorted(l for _, l in recs)
        t0 = min(s for s, _ in recs)
        eps = episodes(recs, a.slow_ms * 1000, a.merge_ms * 1000)
        row = {"p50": pct(lats, .5), "p99": pct(lats, .99), "p999": pct(lats, .999), "max": lats[-1],
               "slow": sum(1 for l in lats if l >= a.slow_ms * 1000), "eps": len(eps)}
        per_mode[m].append(row)
        es = ", ".join("%.2f: %d, %.0f" % ((e["first_sent"] - t0) / 1e6, e["n"], e["max"] / 1000) for e in eps[:4])
        if len(eps) > 4:
            es += ", ..."
        print("| %s | %d | %d | %d | %d | %d | %d | %s |" % (m, r, row["p50"], row["p99"], row["p999"], row["max"], row["slow"], es))
        for e in eps:
            detail.append((m, r, t0, e))

    print()
    print("# Per mode: median [lowest-highest] over the rounds")
    print("| mode | rounds | p99 µs | max µs | rounds with max > %g ms |" % a.slow_ms)
    print("|---|---:|---:|---:|---:|")
    for m in modes:
        rows = per_mode[m]
        if not rows:
            continue
        p99 = [x["p99"] for x in rows]
        mx = [x["max"] for x in rows]
        print("| %s | %d | %d [%d-%d] | %d [%d-%d] | %d |" % (m, len(rows), statistics.median(p99), min(p99), max(p99),
              statistics.median(mx), min(mx), max(mx), sum(1 for x in mx if x > a.slow_ms * 1000)))

    if not detail:
        return
    print()
    print("# Episodes, with the metrics of those seconds and the slow system calls in the window")
    keys = ["commit_us_p99", "queue_us_p99", "ship_us_p99", "handoff_us_p99", "journal_us_p99", "batches", "store_bytes"]
    shown = 0
    for m, r, t0, e in sorted(detail, key=lambda x: -x[3]["max"]):
        if shown >= a.max_episodes:
            print("(%d more episodes not shown)" % (len(detail) - shown))
            break
        shown += 1
        w0, w1 = e["first_sent"], e["end"]
        print("\n## %s round %d: at %.3f s, %d msgs over %g ms, max %.1f ms, window %.1f ms"
              % (m, r, (w0 - t0) / 1e6, e["n"], a.slow_ms, e["max"] / 1000, (w1 - w0) / 1000))
        for t, js in metrics.get(m, []):
            # The line published at t covers the second before it.
            if w0 - 0.2e6 <= t <= w1 + 1.5e6:
                print("  metrics at %+.2f s: %s" % ((t - w0) / 1e6, " ".join("%s=%s" % (k, js.get(k)) for k in keys)))
        names = threads.get(m, {})
        if sched:
            for tid in sorted(names):
                for g0, g1, st in sched.gaps(tid, w0 - 50e3, w1, 5e3):
                    print("  off CPU %+9.2f ms for %6.2f ms  %-9s %s" % ((g0 - w0) / 1000, (g1 - g0) / 1000, names[tid],
                          "woken, waiting for a CPU" if st == "W" else "left in state " + st))
                    for t, frames in dstacks.get(tid, []):
                        if abs(t - g0) < 50:
                            fr = [x for x in frames if x not in SKIP]
                            print("      waiting in: " + " < ".join(fr[:9]))
            for tid, comm in sorted(sched.named.items()):
                for g0, g1, st in sched.gaps(tid, w0 - 50e3, w1, 5e3):
                    print("  off CPU %+9.2f ms for %6.2f ms  %-9s left in state %s" % ((g0 - w0) / 1000, (g1 - g0) / 1000, comm, st))
            waits = []
            for tid, comm in sorted(list(names.items()) + list(sched.named.items())):
                wt = sched.waited(tid, w0, w1)
                if sum(wt.values()) == 0:
                    continue
                waits.append("%s R %.1f / W %.1f / D %.1f / S %.1f" % (comm, wt["R"] / 1000, wt["W"] / 1000, wt["D"] / 1000, wt["S"] / 1000))
            print("  off CPU in the window, ms (R: preempted, W: woken, waiting for a CPU, D: I/O or kernel lock, S: asleep): "
                  + "; ".join(waits))
            busy = sched.busy(w0, w1)
            span = (w1 - w0) * 2  # two CPUs
            print("  CPU time in the window (%.0f ms x 2 CPUs, idle excluded): %s" % ((w1 - w0) / 1000,
                  ", ".join("%s %.0f%%" % (k, 100 * v / span) for k, v in busy.most_common(8))))
        calls = [c for c in traces.get(m, []) if c["end_us"] >= w0 - 50e3 and c["start_us"] <= w1 + 10e3]
        for c in calls[:40]:
            if c["call"] == "epoll_wait" and c["ms"] < 50:
                continue
            print("  %+9.2f ms %6.2f ms  %-9s %s(%s) = %s" % ((c["start_us"] - w0) / 1000, c["ms"], names.get(c["tid"], str(c["tid"])),
                                                           c["call"], c["args"], c["ret"]))


if __name__ == "__main__":
    sys.exit(main())
