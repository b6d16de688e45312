#!/usr/bin/python3
"""Sums up the output of run.py (a --long run's log): runs, seeds that
failed, records, acknowledged messages, faults by action, anomalies, and
the liveness figures, for docs/RELIABILITY.md and issue notes.

    run.py --cluster --long > long.log; summarize.py long.log
"""
import collections
import re
import sys


def summarize(lines):
    runs = ok = 0
    failed = []
    records = acked = 0
    faults = collections.Counter()
    anomalies = collections.Counter()
    stalls = 0
    longest = 0.0
    p99 = []
    section = None
    for ln in lines:
        m = re.search(r"seed (\d+): (OK|FAILED)", ln)
        if m:
            runs += 1
            if m.group(2) == "OK":
                ok += 1
            else:
                failed.append(int(m.group(1)))
            continue
        m = re.match(r"history: (\d+) records", ln)
        if m:
            records += int(m.group(1))
            continue
        if ln.startswith("faults by action:"):
            section = "faults"
            continue
        if ln.startswith("anomalies by kind:"):
            section = "anomalies"
            continue
        if not ln.startswith("  ") or ln.startswith("    "):
            if not ln.startswith("  "):
                section = None
        m = re.match(r"  (\S+)\s+(\d+)$", ln)
        if m and section == "faults":
            faults[m.group(1)] += int(m.group(2))
            continue
        if m and section == "anomalies":
            anomalies[m.group(1)] += int(m.group(2))
            continue
        m = re.search(r"acknowledged messages\s+(\d+)", ln)
        if m:
            acked += int(m.group(1))
            continue
        m = re.search(r"p99 ([\d.]+) s", ln)
        if ln.startswith("liveness:") and m:
            p99.append(float(m.group(1)))
        m = re.search(r"stalls \(.*\): (\d+)(, the longest ([\d.]+) s)?", ln)
        if m:
            stalls += int(m.group(1))
            if m.group(3):
                longest = max(longest, float(m.group(3)))
    return {"runs": runs, "clean": ok, "failed_seeds": failed, "records": records,
            "acknowledged": acked, "faults": dict(faults), "faults_total": sum(faults.values()),
            "anomalies": dict(anomalies), "stalls": stalls, "longest_stall_s": longest,
            "worst_p99_s": max(p99) if p99 else None}


def main(argv):
    lines = []
    for path in argv[1:] or ["-"]:
        with (sys.stdin if path == "-" else open(path, errors="replace")) as f:
            lines.extend(f.read().splitlines())
    s = summarize(lines)
    print("runs %d (clean %d), failed seeds %s" % (s["runs"], s["clean"], s["failed_seeds"] or "none"))
    print("records %d, acknowledged messages %d" % (s["records"], s["acknowledged"]))
    print("faults %d: %s" % (s["faults_total"], ", ".join("%s %d" % kv for kv in sorted(s["faults"].items()))))
    print("anomalies: %s" % (", ".join("%s %d" % kv for kv in sorted(s["anomalies"].items())) or "none"))
    print("liveness: %d stalls of 10 s or more, the longest %.1f s; worst p99 of a run %s s"
          % (s["stalls"], s["longest_stall_s"], s["worst_p99_s"]))
    return 1 if s["failed_seeds"] else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
