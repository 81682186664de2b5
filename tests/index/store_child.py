"""A second process on the same catalog store, driven line by line over stdin/stdout by
tests/index/test_following.py (a real process: its own FAISS copy, its own connection).

argv: repo root, index folder, store URL or '-', 'rw' or 'ro'. Commands, one per line:
``add ID SEED``, ``remove ID``, ``meta ID JSON``, ``wait ID present|absent SECONDS``,
``field ID FIELD SECONDS VALUE``, ``search SECONDS``, ``burst PREFIX N``, ``quit``; each
answers one line.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np

sys.path.insert(0, sys.argv[1])
from index import open_index  # noqa: E402

path, store, mode = sys.argv[2], sys.argv[3], sys.argv[4]
ix = open_index(path, store=None if store == "-" else store, readonly=mode == "ro")
dim = ix.dim
print("ready", flush=True)


def vec(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((1, dim)).astype(np.float32)


def until(cond, seconds: float) -> bool:  # noqa: ANN001
    deadline = time.monotonic() + seconds
    while True:
        ix.sync()
        if cond():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)


for line in sys.stdin:
    cmd, *args = line.split(maxsplit=1)
    args = (
        args[0].split() if args and cmd != "meta" else (args[0].split(maxsplit=1) if args else [])
    )
    if cmd == "add":
        ix.add([args[0]], vec(int(args[1])), [{"by": "child"}])
        print("ok", flush=True)
    elif cmd == "burst":  # N adds one by one, racing other processes' writes
        for i in range(int(args[1])):
            ix.add([f"{args[0]}-{i}"], vec(i), [{"by": args[0]}])
        print("ok", flush=True)
    elif cmd == "remove":
        ix.remove([args[0]])
        print("ok", flush=True)
    elif cmd == "meta":
        ix.update_metadata(args[0], json.loads(args[1]))
        print("ok", flush=True)
    elif cmd == "wait":
        want = args[1] == "present"
        ok = until(lambda a=args[0], w=want: (a in ix) == w, float(args[2]))
        print("yes" if ok else "no", flush=True)
    elif cmd == "field":
        id_, field, seconds, value = args[0], args[1], float(args[2]), args[3]
        ok = until(lambda i=id_, f=field, v=value: str(ix.get(i).metadata.get(f)) == v, seconds)
        print("yes" if ok else "no", flush=True)
    elif cmd == "search":
        deadline, n, errors = time.monotonic() + float(args[0]), 0, []
        q = vec(0)[0]
        while time.monotonic() < deadline:
            try:
                ix.sync()
                hits = ix.search(q, 5)[0]
                assert len(hits) == min(5, len(ix)), (len(hits), len(ix))
                n += 1
            except Exception as exc:
                errors.append(repr(exc))
        print(
            json.dumps({"searches": n, "errors": errors[:3], "n_errors": len(errors)}), flush=True
        )
    elif cmd == "quit":
        break
ix.close()
