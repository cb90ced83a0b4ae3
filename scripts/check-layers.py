#!/usr/bin/env python3
"""The library's module graph must have no cycle (arrows point down; src/lib.rs names the layers).

For every top-level module src/X, lists the `crate::Y` it names outside `#[cfg(test)]` modules and
comments, prints the graph, and exits non-zero naming each cycle. `make lint` runs it.

    scripts/check-layers.py [src]
"""
import os, re, sys
root = sys.argv[1] if len(sys.argv) > 1 else "src"
mods = {}
def top(path):
    rel = os.path.relpath(path, root)
    first = rel.split(os.sep)[0]
    return first[:-3] if first.endswith(".rs") else first
def strip_tests(text):
    # drop `#[cfg(test)] mod x { ... }` blocks by brace matching
    out, i = [], 0
    while True:
        m = re.search(r"#\[cfg\(test\)\]\s*(pub\s+)?mod\s+\w+\s*\{", text[i:])
        if not m:
            out.append(text[i:]); break
        s = i + m.start(); out.append(text[i:s]); j = i + m.end(); depth = 1
        while depth and j < len(text):
            depth += {"{": 1, "}": -1}.get(text[j], 0); j += 1
        i = j
    return "".join(out)
def expand_use(text):
    names = set()
    for m in re.finditer(r"crate::(\{[^;]*?\}|\w+)", text, re.S):
        g = m.group(1)
        if g.startswith("{"):
            depth, cur, parts = 0, "", []
            for ch in g[1:-1]:
                if ch == "{": depth += 1
                elif ch == "}": depth -= 1
                if ch == "," and depth == 0: parts.append(cur); cur = ""
                else: cur += ch
            parts.append(cur)
            for p in parts:
                p = p.strip()
                if p: names.add(re.match(r"\w+", p).group(0))
        else:
            names.add(g)
    return names
for dp, _, fs in os.walk(root):
    for f in fs:
        if not f.endswith(".rs"): continue
        p = os.path.join(dp, f); t = top(p)
        if t in ("main", "lib"): continue
        text = strip_tests(re.sub(r"//[^\n]*", "", open(p).read()))
        deps = expand_use(text) - {t, "artifacts"}
        mods.setdefault(t, set()).update(deps)
for m in sorted(mods): print(f"{m:10} -> {', '.join(sorted(mods[m]))}")
# cycles: Tarjan SCC
idx, low, st, on, sccs, c = {}, {}, [], set(), [], [0]
def sc(v):
    idx[v] = low[v] = c[0]; c[0] += 1; st.append(v); on.add(v)
    for w in mods.get(v, ()):
        if w not in mods: continue
        if w not in idx: sc(w); low[v] = min(low[v], low[w])
        elif w in on: low[v] = min(low[v], idx[w])
    if low[v] == idx[v]:
        comp = []
        while True:
            w = st.pop(); on.discard(w); comp.append(w)
            if w == v: break
        if len(comp) > 1: sccs.append(comp)
for v in mods:
    if v not in idx: sc(v)
print("cycles:", sccs if sccs else "none")
sys.exit(1 if sccs else 0)
