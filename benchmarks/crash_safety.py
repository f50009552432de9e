"""Crash safety of the store: SIGKILL a capturing process at random moments, then check the file.

    .venv/bin/python benchmarks/crash_safety.py [--kills 30] [--min-captures 100] [--db PATH] [--seed 0]

A writer process loads the default model (smollm2-135m) once and captures distinct short prompts
back to back through the normal path (`runs.capture_run` -> `Store.put_run`), printing
`ACK <run_id>` only after each run's transaction has committed. The controller kills it with
SIGKILL after a random delay, starts a new writer on the same database, and so on, until it has
injected `--kills` faults and the writers have attempted at least `--min-captures` captures. Then
a fresh process opens the database and checks:

- it opens (the WAL is replayed);
- no acknowledged run is lost: every ACKed run id is there;
- no half-written run is visible: every run has exactly n_tokens token rows and n_layers*n_tokens
  activation rows, its activations decode to finite numbers, and no row belongs
  to a run that is not in the runs table.

Prints the figures (and one JSON line with --json). Exit status 1 if any check fails.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

WORDS = ("river stone lamp quiet orbit maple signal harbor velvet copper meadow lantern thunder "
         "pepper canvas violet anchor saddle glacier mirror").split()


def prompt(seed: int, i: int, words: int) -> str:
    rng = random.Random(seed * 1_000_003 + i)
    return f"Capture {seed}-{i}: " + " ".join(rng.choice(WORDS) for _ in range(words))


def writer(db: str, seed: int, start: int, words: int) -> None:
    """Capture prompts start, start+1, ... forever; `ACK run_id` after each commit."""
    from moyu_core import hooks, models, runs
    from moyu_core.store import Store

    put_run = Store.put_run

    def announced_put_run(self, *a, **k):  # the normal write, announced so kills can be classified
        print("WRITE", flush=True)
        return put_run(self, *a, **k)

    Store.put_run = announced_put_run
    models.setup_compute()
    lm = models.load(models.DEFAULT_MODEL)
    hooks.capture(lm, lm.encode(prompt(seed, -1, words)))  # warm-up: kills land on steady-state captures
    store = Store(db)
    print("READY", flush=True)
    i = start
    while True:
        print(f"BEGIN {i}", flush=True)
        r = runs.capture_run(lm, store, prompt(seed, i, words))
        print(f"ACK {r.run_id} {i}", flush=True)
        i += 1


def check(db: str, acked: list[str]) -> dict:
    """Open the database in this (fresh) process and check every run is whole."""
    import numpy as np

    from moyu_core.store import Store

    t0 = time.monotonic()
    store = Store(db)
    with store._connect() as con:
        runs = con.execute("SELECT run_id, n_tokens, n_layers FROM runs").fetchall()
        counts = {}
        for table in ("tokens", "activations"):
            counts[table] = dict(con.execute(f"SELECT run_id, count(*) FROM {table} GROUP BY run_id").fetchall())
    open_s = time.monotonic() - t0
    present = {r[0] for r in runs}
    lost = [rid for rid in acked if rid not in present]
    half = []
    for rid, T, L in runs:
        if (counts["tokens"].get(rid), counts["activations"].get(rid)) != (T, L * T):
            half.append(rid)
            continue
        z = store.activations(rid, L - 1)
        if z.shape[0] != T or not np.isfinite(z).all():
            half.append(rid)
    orphans = sorted({rid for c in counts.values() for rid in c} - present)
    store.close()
    return {"runs_in_db": len(runs), "acked": len(set(acked)), "lost": len(lost), "half_written": len(half),
            "orphan_rows_of": len(orphans), "open_and_check_s": round(open_s, 2), "lost_ids": lost[:10],
            "half_ids": half[:10], "orphan_ids": orphans[:10]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=30, help="SIGKILLs to inject (default 30)")
    ap.add_argument("--min-captures", type=int, default=100, help="captures to attempt at least (default 100)")
    ap.add_argument("--db", default=None, help="database file (default: a fresh temporary one)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--words", type=int, default=24, help="words per prompt (default 24, ~40 tokens)")
    ap.add_argument("--max-delay", type=float, default=2.0, help="longest wait before a kill, s")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--writer", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--start", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.writer:
        writer(args.db, args.seed, args.start, args.words)
        return 0

    tmp = None
    if args.db is None:
        tmp = tempfile.TemporaryDirectory()
        args.db = str(Path(tmp.name) / "crash.duckdb")
    rng = random.Random(args.seed)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", MOYU_DB_TIMEOUT="60")
    acked: list[str] = []
    begun = killed_mid_capture = killed_in_write = kills = 0
    next_i = 0
    t_start = time.monotonic()
    while kills < args.kills or begun < args.min_captures:
        proc = subprocess.Popen([sys.executable, __file__, "--writer", "--db", args.db, "--seed", str(args.seed),
                                 "--start", str(next_i), "--words", str(args.words)],
                                cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        lines: list[str] = []
        ready = threading.Event()

        def pump(p=proc, out=lines, ev=ready):
            for ln in p.stdout:
                out.append(ln.rstrip("\n"))
                if ln.startswith("READY"):
                    ev.set()
            ev.set()

        th = threading.Thread(target=pump, daemon=True)
        th.start()
        if not ready.wait(180) or proc.poll() is not None:
            proc.kill()
            print("writer failed to start", file=sys.stderr)
            return 1
        time.sleep(rng.uniform(0.0, args.max_delay))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        th.join(10)
        kills += 1
        last_begin, writing = None, False
        for ln in lines:
            if ln.startswith("BEGIN "):
                begun += 1
                last_begin, writing = int(ln.split()[1]), False
            elif ln.startswith("WRITE"):
                writing = True
            elif ln.startswith("ACK "):
                acked.append(ln.split()[1])
                last_begin, writing = None, False
                next_i = int(ln.split()[2]) + 1
        if last_begin is not None:  # killed inside a capture: the next writer retries that prompt
            killed_mid_capture += 1
            killed_in_write += writing
            next_i = last_begin
    elapsed = time.monotonic() - t_start
    # the check runs in a fresh process, as a user opening the file after a crash would (`-c`
    # imports from its working directory, the repository root)
    out = subprocess.run([sys.executable, "-c",
                          "import json,sys; from benchmarks.crash_safety import check;"
                          "print(json.dumps(check(sys.argv[1], json.loads(sys.stdin.read()))))",
                          args.db], input=json.dumps(acked), cwd=ROOT, env=env,
                         capture_output=True, text=True)
    if out.returncode != 0:
        print(f"database did not open after the crashes: {out.stderr.strip()[-800:]}", file=sys.stderr)
        return 1
    res = json.loads(out.stdout.strip().splitlines()[-1])
    res.update(kills=kills, captures_attempted=begun, killed_mid_capture=killed_mid_capture,
               killed_in_write=killed_in_write,
               elapsed_s=round(elapsed, 1), db_opens=True)
    ok = res["lost"] == 0 and res["half_written"] == 0 and res["orphan_rows_of"] == 0
    print(f"SIGKILLs injected:            {kills} (random delay 0..{args.max_delay} s after the model loaded)")
    print(f"captures attempted:           {begun} ({killed_mid_capture} killed mid-capture, "
          f"{killed_in_write} of them inside Store.put_run)")
    print(f"runs acknowledged (committed): {res['acked']}")
    print(f"runs in the database:         {res['runs_in_db']}")
    print(f"database opens:               yes ({res['open_and_check_s']} s to open and check)")
    print(f"acknowledged runs lost:       {res['lost']}")
    print(f"half-written runs visible:    {res['half_written']} (orphan rows of {res['orphan_rows_of']} runs)")
    print(f"verdict:                      {'PASS' if ok else 'FAIL'}  ({elapsed:.0f} s)")
    if args.json:
        print(json.dumps(res))
    if tmp is not None:
        tmp.cleanup()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
