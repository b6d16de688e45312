#!/usr/bin/python3
"""Draw the file-level dependency graph of plugin/ and enforce its layering.

Usage: scripts/layers.py [--root plugin] [--examples DIR] [--max-upward N]
                         [--max-header-lines L] [--public GLOB]... [--dot FILE]
                         [--quiet]

Nodes. Each file is a node (plugin/store/sqlite/msg.c and msg.h are two):
a header only declares, so it never depends on its own .c, and a circle
is a loop of calls between .c files, which may pass through headers only
where a header includes a header. With --pair a .c and the .h of the same
stem are one node instead (the stricter reading: a header then also
stands for what its .c calls). Generated files
(*.pb-c.c, *.pb-c.h, or files saying "generated ... do not edit" at the top)
are skipped.

Edges. A -> B means "A depends on B". There are two kinds:
  include  #include "x.h" in any file of A, resolved relative to the including
           file's folder, then relative to plugin/, then as the only header of
           that basename under plugin/. <...> includes and includes that do not
           resolve to a file under plugin/ (e.g. "im.pb-c.h") are ignored.
  call     a direct call name(...) inside a function body of A's .c, where name
           is a non-static function defined in B's .c. Taking a function's
           address (hooks, callback tables) is not a call and does not count;
           neither does a member call s->fn(...), nor anything inside a #define
           body. A static function of the caller's own file shadows a global
           one of the same name.
Self-edges are dropped.

Layers. A module's layer is its top-level folder under plugin/, ranked in
LAYERS below (1 is the top). A -> B is an *upward* edge when A's rank number
is greater than B's: a lower layer reaching up. Equal ranks may use each other
freely. Modules directly in plugin/ or in an unknown folder have no layer: they
take part in the circle check but not in the upward check (a warning names
them).

Checks (exit status 1 if any fails, 2 on usage error, else 0):
  - no circles: no strongly connected component of more than one module;
  - at most --max-upward upward module pairs (default 5);
  - no header under plugin/ longer than --max-header-lines (default 300);
  - no file under examples/ includes a plugin header that is not public. A
    quoted include found relative to the example file is the example's own,
    unless that path lies inside plugin/; otherwise, if a header of that
    basename exists under plugin/, the example uses a plugin header. Public
    headers match one of the --public globs (relative to plugin/, default
    codec/frame.h and base/limits.h; "*" stays inside one folder, "**"
    spans folders).

The last line of stdout is always
  layers: N modules, E edges, C circles, U upward calls (max M),
  H headers over L lines, X private includes in examples
(on one line).
"""
import argparse
import bisect
import fnmatch
import os
import re
import sys
from collections import defaultdict, deque

# Top (1) to bottom. Same number = same layer. Edit here when folders move.
LAYERS = {
    "broker": 1,
    "cluster": 2,
    "worker": 3,
    "store": 4,     # store/sqlite and store/pg included
    "codec": 5,
    "journal": 5,
    "base": 6,
}

LEXEME = re.compile(r'//[^\n]*|/\*.*?\*/|"(?:\\.|[^"\\\n])*"|\'(?:\\.|[^\'\\\n])*\'', re.S)
INCLUDE = re.compile(r'^[ \t]*#[ \t]*include[ \t]*"([^"]+)"', re.M)
CALL = re.compile(r'\b([A-Za-z_]\w*)\s*\(')
NOT_NAMES = {"if", "while", "for", "switch", "return", "sizeof", "_Alignof", "alignof",
             "__attribute__", "__typeof__", "typeof", "_Static_assert", "defined"}
SHOWN = 3  # evidence items printed per edge


def strip(text, keep_strings):
    """Blank comments (and strings/char literals unless keep_strings), keeping line numbers."""
    def repl(m):
        s = m.group()
        if s[0] in "\"'":
            return s if keep_strings else s[0] * 2
        return "\n" * s.count("\n") or " "
    return LEXEME.sub(repl, text)


def blank_directives(code):
    """Blank preprocessor lines: macro bodies are not code we can attribute."""
    out, cont = [], False
    for line in code.split("\n"):
        directive = cont or line.lstrip().startswith("#")
        cont = directive and line.rstrip().endswith("\\")
        out.append("" if directive else line)
    return "\n".join(out)


def functions(code):
    """Yield (name, static, head_pos, body_start, body_end) per top-level definition."""
    start, i, n = 0, 0, len(code)
    while i < n:
        c = code[i]
        if c == ";":
            start = i + 1
        elif c == "}":  # unbalanced: #if branches each opening a brace
            start = i + 1
        elif c == "{":
            depth, j = 1, i + 1
            while j < n and depth:
                depth += {"{": 1, "}": -1}.get(code[j], 0)
                j += 1
            head = code[start:i].rstrip()
            m = head_name(head)
            if m:
                name, pos = m
                static = re.search(r"\bstatic\b", head[:pos]) is not None
                yield name, static, start + pos, i + 1, j - 1
            start = i = j
            continue
        i += 1


def head_name(head):
    """The function name if head is a definition's declarator, else None."""
    if not head.endswith(")") or "=" in head:
        return None
    depth, k = 0, len(head) - 1
    while k >= 0:
        depth += {")": 1, "(": -1}.get(head[k], 0)
        if depth == 0:
            break
        k -= 1
    m = re.search(r"([A-Za-z_]\w*)\s*$", head[:k])
    if k < 0 or not m or m.group(1) in NOT_NAMES:
        return None
    return m.group(1), m.start(1)


def generated(path, text):
    top = "\n".join(text.split("\n")[:5]).lower()
    return ".pb-c." in os.path.basename(path) or ("generated" in top and "do not edit" in top)


def glob_match(path, pattern):
    def rec(ps, pp):
        if not pp:
            return not ps
        if pp[0] == "**":
            return any(rec(ps[i:], pp[1:]) for i in range(len(ps) + 1))
        return bool(ps) and fnmatch.fnmatchcase(ps[0], pp[0]) and rec(ps[1:], pp[1:])
    return rec(path.split("/"), pattern.split("/"))


class Tree:
    def __init__(self, root):
        self.root = root
        self.text = {}  # rel path -> raw text
        for d, dirs, names in os.walk(root):
            dirs.sort()
            for f in sorted(names):
                if f.endswith((".c", ".h")):
                    p = os.path.join(d, f)
                    with open(p, encoding="utf-8", errors="replace") as fh:
                        t = fh.read()
                    if not generated(p, t):
                        self.text[os.path.relpath(p, root).replace(os.sep, "/")] = t
        self.by_base = defaultdict(list)
        for rel in self.text:
            if rel.endswith(".h"):
                self.by_base[os.path.basename(rel)].append(rel)
        self.edges = defaultdict(list)  # (A, B) -> [(kind, file, line, what)]
        self.ambiguous, self.unresolved = set(), set()
        self.modules = sorted({self.module(r) for r in self.text})

    PAIR = False

    @classmethod
    def module(cls, rel):
        return rel.rsplit(".", 1)[0] if cls.PAIR else rel

    def resolve(self, inc, from_rel):
        for base in (os.path.dirname(from_rel), ""):
            p = os.path.normpath(os.path.join(base, inc)).replace(os.sep, "/")
            if p in self.text:
                return p
        cands = self.by_base.get(os.path.basename(inc), [])
        if len(cands) > 1:
            self.ambiguous.add((inc, from_rel))
        return cands[0] if len(cands) == 1 else None

    def build(self):
        clean, defs, statics = {}, defaultdict(set), defaultdict(set)
        for rel, raw in self.text.items():
            for m in INCLUDE.finditer(strip(raw, keep_strings=True)):
                target = self.resolve(m.group(1), rel)
                if not target:
                    self.unresolved.add(m.group(1))
                else:
                    line = raw.count("\n", 0, m.start()) + 1
                    self.add(rel, target, "include", line, '"%s"' % m.group(1))
            if rel.endswith(".c"):
                clean[rel] = code = blank_directives(strip(raw, keep_strings=False))
                for name, static, _, _, _ in functions(code):
                    (statics[rel] if static else defs[name]).add(rel)
        for rel, code in clean.items():
            lines = [i for i, c in enumerate(code) if c == "\n"]
            for _, _, _, b0, b1 in functions(code):
                for m in CALL.finditer(code, b0, b1):
                    name = m.group(1)
                    before = code[:m.start()].rstrip()[-2:]
                    if name not in defs or name in statics[rel] or before.endswith((".", "->")):
                        continue
                    line = bisect.bisect_left(lines, m.start()) + 1
                    for target in defs[name]:
                        self.add(rel, target, "call", line, name + "()")
        self.dups = {n: sorted(f) for n, f in defs.items() if len(f) > 1}

    def add(self, src, dst, kind, line, what):
        a, b = self.module(src), self.module(dst)
        if a != b:
            self.edges[a, b].append((kind, src, line, what))


def layer(mod):
    return LAYERS.get(mod.split("/")[0]) if "/" in mod else None


def sccs(nodes, succ):
    """Iterative Tarjan: no recursion limit on long chains."""
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]
    for root in nodes:
        if root in index:
            continue
        work = [(root, iter(succ[root]))]
        index[root] = low[root] = counter[0]; counter[0] += 1
        stack.append(root); on.add(root)
        while work:
            v, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter[0]; counter[0] += 1
                    stack.append(w); on.add(w)
                    work.append((w, iter(succ[w])))
                    break
                if w in on:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop(); on.discard(w); comp.append(w)
                        if w == v:
                            break
                    out.append(sorted(comp))
    return out


def covering_cycle(comp, succ):
    """A closed walk from the first member through every member (nearest unvisited next)."""
    members, start = set(comp), comp[0]
    walk, seen = [start], {start}

    def path_to(src, goal):
        prev, q = {src: None}, deque([src])
        while q:
            v = q.popleft()
            if goal(v) and v != src:
                out = [v]
                while prev[out[-1]] != src:
                    out.append(prev[out[-1]])
                return out[::-1]
            for w in succ[v]:
                if w in members and w not in prev:
                    prev[w] = v; q.append(w)
        return []
    while len(seen) < len(members):
        step = path_to(walk[-1], lambda v: v not in seen)
        walk += step; seen.update(step)
    return walk + path_to(walk[-1], lambda v: v == start)


def evidence(items, base):
    calls = defaultdict(list)
    for kind, f, line, what in items:
        key = "include %s" % what if kind == "include" else "calls %s" % what
        calls[key].append("%s:%d" % (base(f), line))
    parts = ["%s at %s%s" % (k, ", ".join(v[:2]), " (x%d)" % len(v) if len(v) > 2 else "")
             for k, v in calls.items()]
    more = len(parts) - SHOWN
    return "; ".join(parts[:SHOWN]) + (" (+%d more)" % more if more > 0 else "")


def main():
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap = argparse.ArgumentParser(description="Dependency graph and layering check of plugin/.")
    ap.add_argument("--root", default=os.path.join(repo, "plugin"), help="plugin source tree")
    ap.add_argument("--examples", help="examples tree (default: ROOT/../examples)")
    ap.add_argument("--max-upward", type=int, default=5, metavar="N")
    ap.add_argument("--max-header-lines", type=int, default=300, metavar="L")
    ap.add_argument("--public", action="append", metavar="GLOB",
                    help="public header glob relative to ROOT (repeatable; default codec/frame.h and base/limits.h)")
    ap.add_argument("--dot", metavar="FILE", help="write the module graph as Graphviz dot")
    ap.add_argument("--quiet", action="store_true", help="print only violations and the last line")
    ap.add_argument("--pair", action="store_true", help="a .c and its .h are one node")
    args = ap.parse_args()
    Tree.PAIR = args.pair
    root = args.root
    if not os.path.isdir(root) and os.path.isdir(os.path.join(repo, root)):
        root = os.path.join(repo, root)  # --root plugin from outside the repo
    if not os.path.isdir(root):
        ap.error("--root %s: not a directory" % args.root)
    root = os.path.abspath(root)
    examples = os.path.abspath(args.examples or os.path.join(os.path.dirname(root), "examples"))
    public = args.public or ["codec/frame.h", "base/limits.h"]
    top = os.path.dirname(root)

    def show(rel):  # paths as printed: relative to the root's parent, e.g. plugin/x.c
        return os.path.relpath(os.path.join(root, rel), top)

    def say(*a):
        if not args.quiet:
            print(*a)

    t = Tree(root)
    t.build()
    succ = defaultdict(list)
    for a, b in sorted(t.edges):
        succ[a].append(b)
    n_inc = sum(1 for e in t.edges.values() if all(k == "include" for k, _, _, _ in e))
    say("plugin layers: %s (%d files)" % (show("."), len(t.text)))
    say("  %d modules, %d edges (%d include only)" % (len(t.modules), len(t.edges), n_inc))
    unlayered = [m for m in t.modules if layer(m) is None]
    if unlayered:
        print("warning: %d modules have no layer (top-level folder not in LAYERS): %s"
              % (len(unlayered), " ".join(unlayered)), file=sys.stderr)
    for inc, rel in sorted(t.ambiguous):
        print('warning: %s: "%s" matches several headers; ignored' % (show(rel), inc), file=sys.stderr)
    if t.unresolved and not args.quiet:
        print("note: quoted includes not found under %s (ignored): %s"
              % (show("."), " ".join(sorted(t.unresolved))), file=sys.stderr)
    for name, files in sorted(t.dups.items()):
        print("warning: %s() is defined in %s; calls count against each"
              % (name, ", ".join(show(f) for f in files)), file=sys.stderr)

    circles = [c for c in sccs(t.modules, succ) if len(c) > 1]
    circles.sort(key=lambda c: (-len(c), c))
    # Which members are held in only by include edges (a shared header paired
    # with one .c drags every includer in): tells the reader where to cut.
    call_succ = defaultdict(list)
    for (a, b), ev in sorted(t.edges.items()):
        if any(k == "call" for k, _, _, _ in ev):
            call_succ[a].append(b)
    in_call_circle = {m for c in sccs(t.modules, call_succ) if len(c) > 1 for m in c}
    print("\ncircles: %d" % len(circles))
    for i, comp in enumerate(circles, 1):
        print("  circle %d (%d modules): %s" % (i, len(comp), " ".join(comp)))
        extra = [m for m in comp if m not in in_call_circle]
        if len(extra) == len(comp):
            print("    (a circle only because of include edges; calls alone do not close it)")
        elif extra:
            print("    in it through include edges only: " + " ".join(extra))
        walk = covering_cycle(comp, succ)
        print("    path: " + " -> ".join(walk))
        for a, b in zip(walk, walk[1:]):
            print("      %s -> %s: %s" % (a, b, evidence(t.edges[a, b], show)))

    upward = sorted(e for e in t.edges if layer(e[0]) and layer(e[1]) and layer(e[0]) > layer(e[1]))
    print("\nupward calls: %d (max %d)" % (len(upward), args.max_upward))
    for a, b in upward:
        print("  %s (%d) -> %s (%d): %s" % (a, layer(a), b, layer(b), evidence(t.edges[a, b], show)))

    big = [(r, len(x.splitlines())) for r, x in sorted(t.text.items()) if r.endswith(".h")]
    big = [(r, n) for r, n in big if n > args.max_header_lines]
    print("\nheaders over %d lines: %d" % (args.max_header_lines, len(big)))
    for r, n in big:
        print("  %s: %d lines" % (show(r), n))

    private = []
    for d, dirs, names in os.walk(examples):
        dirs.sort()
        for f in sorted(n for n in names if n.endswith((".c", ".h"))):
            path = os.path.join(d, f)
            with open(path, encoding="utf-8", errors="replace") as fh:
                raw = strip(fh.read(), keep_strings=True)
            for m in INCLUDE.finditer(raw):
                inc, hit = m.group(1), None
                local = os.path.normpath(os.path.join(d, inc))
                if os.path.isfile(local):
                    rel = os.path.relpath(local, root).replace(os.sep, "/")
                    hit = rel if rel in t.text else None
                else:
                    hit = t.resolve(inc, "") or (t.by_base.get(os.path.basename(inc)) or [None])[0]
                if hit and not any(glob_match(hit, p) for p in public):
                    line = raw.count("\n", 0, m.start()) + 1
                    private.append("%s:%d: \"%s\" is %s" % (os.path.relpath(path, top), line, inc, show(hit)))
    print("\nprivate includes in examples: %d (public: %s)" % (len(private), " ".join(public)))
    for p in private:
        print("  " + p)

    if args.dot:
        write_dot(args.dot, t, set(upward))

    print("layers: %d modules, %d edges, %d circles, %d upward calls (max %d), "
          "%d headers over %d lines, %d private includes in examples"
          % (len(t.modules), len(t.edges), len(circles), len(upward), args.max_upward,
             len(big), args.max_header_lines, len(private)))
    ok = not circles and len(upward) <= args.max_upward and not big and not private
    return 0 if ok else 1


def write_dot(path, t, upward):
    q = lambda s: '"%s"' % s
    groups = defaultdict(list)
    for m in t.modules:
        groups[m.split("/")[0] if "/" in m else ""].append(m)
    out = ["digraph layers {", "  rankdir=TB; node [shape=box fontsize=10];"]
    for folder in sorted(groups, key=lambda f: (LAYERS.get(f, 99), f)):
        if folder:
            rank = LAYERS.get(folder, "no layer")
            out.append("  subgraph %s {" % q("cluster_" + folder))
            out.append("    label=%s;" % q("%s (%s)" % (folder, rank)))
        out += ["    %s;" % q(m) for m in groups[folder]]
        if folder:
            out.append("  }")
    for (a, b), ev in sorted(t.edges.items()):
        attrs = []
        if (a, b) in upward:
            attrs.append("color=red")
        if all(k == "include" for k, _, _, _ in ev):
            attrs.append("style=dashed")
        out.append("  %s -> %s%s;" % (q(a), q(b), " [%s]" % " ".join(attrs) if attrs else ""))
    out.append("}")
    with open(path, "w") as fh:
        fh.write("\n".join(out) + "\n")


if __name__ == "__main__":
    sys.exit(main())
