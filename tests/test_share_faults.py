"""Faults and concurrency: SIGKILLed writers lose no committed run and leave no half run; a
command-line capture succeeds while another process uses the database the way the app does."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENV = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")


def test_crash_safety_few_kills(tmp_path):
    db = tmp_path / "crash.duckdb"
    out = subprocess.run([sys.executable, "benchmarks/crash_safety.py", "--kills", "3", "--min-captures", "6",
                          "--max-delay", "3.0", "--seed", "7", "--db", str(db), "--json"],
                         cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert out.returncode == 0, out.stdout + out.stderr
    assert res["kills"] >= 3 and res["captures_attempted"] >= 6
    assert res["db_opens"] and res["lost"] == 0 and res["half_written"] == 0 and res["orphan_rows_of"] == 0
    assert res["acked"] >= 1 and res["runs_in_db"] >= res["acked"]


APP_LIKE = textwrap.dedent("""
    # Reads like the app does: a burst of reads when a user clicks, then think time.
    import os, sys, time
    from moyu_core.store import Store
    s = Store(sys.argv[2])
    rid = s.list_runs()[0]["run_id"]
    print("HOLDING", flush=True)
    reads, t_end = 0, time.monotonic() + 240
    while time.monotonic() < t_end and not os.path.exists(sys.argv[3]):
        burst = time.monotonic() + 0.4
        while time.monotonic() < burst:
            s.list_runs(); s.activations(rid, reads % 30); s.tokens(rid)
            reads += 1
        time.sleep(1.0)
    print("READS", reads, len(s.list_runs()), flush=True)
""")


def test_cli_capture_while_app_like_process_reads(lm, tmp_path):
    from moyu_core.runs import capture_run
    from moyu_core.store import Store

    db, stop = tmp_path / "shared.duckdb", tmp_path / "stop"
    s = Store(db)
    first = capture_run(lm, s, "The app already has this run.").run_id
    s.close()
    app = subprocess.Popen([sys.executable, "-c", APP_LIKE, str(ROOT), str(db), str(stop)], cwd=ROOT, env=ENV,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert app.stdout.readline().strip() == "HOLDING"
    cli = subprocess.run([sys.executable, "-m", "moyu_core", "capture", "Written by the command line.",
                          "--db", str(db), "--json"], cwd=ROOT, env=ENV, capture_output=True, text=True,
                         timeout=240)
    assert cli.returncode == 0, cli.stderr[-2000:]
    new = json.loads(cli.stdout.strip().splitlines()[-1])["run_id"]
    time.sleep(1.5)  # one more burst of reads after the capture
    stop.touch()
    out, err = app.communicate(timeout=120)
    assert app.returncode == 0, err[-2000:]
    reads, seen = map(int, out.split()[1:3])
    assert reads > 10 and seen == 2  # the reader kept working and saw the new run
    s = Store(db)
    assert s.has_run(first) and s.has_run(new)
    assert s.activations(new, 29).shape[0] == s.run(new).n_tokens
    s.close()
