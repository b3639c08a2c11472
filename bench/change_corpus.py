#!/usr/bin/env python3
"""Deterministic change of about 5 % of a corpus's bytes, as a day of service makes it
(bench/run.sh, the second-backup rounds of issue 16):

- database files (the big files under data/, every third one in path order): a region in
  the middle rewritten in place and data appended, about 2.5 % of the corpus;
- new uploads under upload/bench-new/, about 2 %;
- 300 small files (under 64 KiB, evenly spread in path order) appended a line.

Same corpus, same change: paths are sorted and the bytes come from a seeded generator.
Prints a JSON summary (bytes rewritten, appended, added; files touched).
"""
import json
import os
import random
import sys


def files(root):
    out = []
    for dp, dns, fns in os.walk(root):
        dns.sort()
        for n in sorted(fns):
            p = os.path.join(dp, n)
            if os.path.isfile(p) and not os.path.islink(p):
                out.append((os.path.relpath(p, root), os.path.getsize(p)))
    out.sort()
    return out


def main():
    root = sys.argv[1]
    rng = random.Random(16)
    all_files = files(root)
    total = sum(s for _, s in all_files)
    stats = {"corpus_bytes": total, "rewritten": 0, "appended": 0, "added": 0,
             "db_files": 0, "small_files": 0, "new_files": 0}

    budget = total * 25 // 1000
    db = [(p, s) for p, s in all_files if p.startswith("data/") and s >= (1 << 20)][::3]
    for p, s in db:
        if budget <= 0:
            break
        chunk = min(max(s // 8, 64 << 10), budget // 2 + 1)
        with open(os.path.join(root, p), "r+b") as f:
            f.seek(s // 2 - chunk // 2)
            f.write(rng.randbytes(chunk))
            f.seek(0, 2)
            f.write(rng.randbytes(chunk))
        stats["rewritten"] += chunk
        stats["appended"] += chunk
        stats["db_files"] += 1
        budget -= 2 * chunk

    new_dir = os.path.join(root, "upload", "bench-new")
    os.makedirs(new_dir, exist_ok=True)
    budget = total * 20 // 1000
    i = 0
    while budget > 0:
        n = min(budget, rng.randrange(200 << 10, 4 << 20))
        # Half random (photos), half text (documents).
        data = rng.randbytes(n) if i % 2 == 0 else (b"lorem ipsum dolor %d\n" % i) * (n // 20 + 1)
        with open(os.path.join(new_dir, "new-%04d.bin" % i), "wb") as f:
            f.write(data[:n])
        stats["added"] += n
        stats["new_files"] += 1
        budget -= n
        i += 1

    small = [p for p, s in all_files if s < (64 << 10)]
    step = max(1, len(small) // 300)
    for p in small[::step][:300]:
        with open(os.path.join(root, p), "ab") as f:
            f.write(b"\n# touched by bench/change_corpus.py\n")
        stats["small_files"] += 1
    json.dump(stats, sys.stdout)
    print()


if __name__ == "__main__":
    main()
