#!/usr/bin/env python3
"""Where a running sluice's resident memory goes, from /proc/PID/smaps.

    benches/rss.py PID            # one table, MiB
    benches/rss.py PID --json     # the same as one JSON object (benches/startup.sh uses it)

Mappings are grouped by what holds them:

  binary               sluice's own code and read-only data (file-backed: shared with every
                       sluice process started from the same file)
  compiled components  the middleware components mapped from the artifact cache's .cwasm files
                       (file-backed): their machine code, and the initialized linear-memory
                       pages instances have read but not written (mapped copy-on-write from the
                       same file, so shared by every instance and every sluice)
  shared libraries     libc, libm, ...
  wasm memories        the pages of instances' linear memories that live and idle instances have
                       written: private copies, in the pool's reservation or inside the
                       copy-on-write mapping of their initialized image
  wasm pool (other)    the pool's other reservations (tables, fiber stacks)
  heap                 every other private anonymous mapping: the allocator's arenas (component
                       metadata, sluice's config and routes, connection buffers), thread stacks

Anonymous mappings that touch each other are one reservation split by mprotect; a reservation of
a terabyte or more is the linear-memory pool (sluice reserves 1 GiB per slot), one of gigabytes that
is not the allocator's is the pool's tables and stacks.
"""
import json
import re
import sys

MiB = 1024 * 1024


def mappings(pid):
    maps, current = [], None
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            m = re.match(r"^([0-9a-f]+)-([0-9a-f]+) (\S+) \S+ \S+ (\d+)\s*(.*)$", line)
            if m:
                current = {
                    "start": int(m.group(1), 16),
                    "end": int(m.group(2), 16),
                    "perm": m.group(3),
                    "inode": int(m.group(4)),
                    "path": m.group(5).strip(),
                    "rss": 0,
                    "anon": 0,
                }
                maps.append(current)
            elif line.startswith("Rss:") and current is not None:
                current["rss"] = int(line.split()[1]) * 1024
            elif line.startswith("Anonymous:") and current is not None:
                current["anon"] = int(line.split()[1]) * 1024
    return maps


def regions(maps):
    """Anonymous mappings merged where they touch: one reservation each."""
    out = []
    for m in sorted(maps, key=lambda m: m["start"]):
        anonymous = m["inode"] == 0 and not m["path"]
        if anonymous and out and out[-1]["anonymous"] and out[-1]["end"] == m["start"]:
            out[-1]["end"] = m["end"]
            out[-1]["rss"] += m["rss"]
            out[-1]["writable"] |= "w" in m["perm"]
        else:
            out.append(dict(m, anonymous=anonymous, writable="w" in m["perm"]))
    return out


def classify(region, exe):
    path, size = region["path"], region["end"] - region["start"]
    if not region["anonymous"]:
        if path == exe:
            return "binary"
        if path.endswith(".cwasm"):
            return "compiled components"
        if ".so" in path:
            return "shared libraries"
        if path.startswith("["):
            return "heap"  # [heap], [stack], [vdso]...
        return "other files"
    if size >= 1 << 40:
        return "wasm memories"
    if size >= 2 << 30 and region["writable"] and size % (1 << 30) != 0:
        return "wasm pool (other)"
    return "heap"


def main():
    pid = sys.argv[1]
    exe = __import__("os").readlink(f"/proc/{pid}/exe")
    totals = {}
    for region in regions(mappings(pid)):
        kind = classify(region, exe)
        rss = region["rss"]
        if kind == "compiled components":
            # An instance's linear memory is the file's initialized image mapped copy-on-write:
            # the pages it wrote are private copies inside that mapping.
            totals["wasm memories"] = totals.get("wasm memories", 0) + region["anon"]
            rss -= region["anon"]
        totals[kind] = totals.get(kind, 0) + rss
    total = sum(totals.values())
    if "--json" in sys.argv:
        print(json.dumps({k: round(v / MiB, 1) for k, v in totals.items()} | {"total": round(total / MiB, 1)}))
        return
    for kind, rss in sorted(totals.items(), key=lambda kv: -kv[1]):
        print(f"{kind:22} {rss / MiB:8.1f} MiB")
    print(f"{'total':22} {total / MiB:8.1f} MiB")


if __name__ == "__main__":
    main()
