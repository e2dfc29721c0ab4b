"""Crash safety of the store: SIGKILL during heavy ingest, again and again.

The release binary ingests ~200,000 readings/s from simulated devices into
one state directory. Each round it runs a random 0.3-1.5 s, a separate
reader (Python's sqlite3) notes the highest seq committed so far, and the
gateway is SIGKILLed. Then, before the next start:

- `PRAGMA integrity_check` is ok;
- readings hold exactly seq 1..N (count == N: no gap, no repeat);
- N >= the seq the reader saw committed (nothing committed is lost);
- meta next_seq == N + 1;

and the next run continues at N + 1 (its readings have seq > N, the old
ones are untouched). A final run ends with SIGTERM: exit 0, same checks.
"""

from __future__ import annotations

import os
import random
import signal
import time

from conftest import assert_gapless, max_committed_seq, open_db_ro, sim_config

ROUNDS = 20
DEVICES, POINTS, RATE = 4, 25, 2000  # 200,000 readings/s in total


def check_continuation(db, previous_n: int, run_started_ns: int) -> None:
    """Readings up to `previous_n` predate this run; every later one was
    ingested by it, starting exactly at previous_n + 1."""
    conn = open_db_ro(db)
    try:
        old_max_ts = conn.execute("SELECT max(ts) FROM readings WHERE seq <= ?", (previous_n,)).fetchone()[0]
        first_new = conn.execute(
            "SELECT min(seq), min(ts) FROM readings WHERE seq > ?", (previous_n,)
        ).fetchone()
    finally:
        conn.close()
    if previous_n:
        assert old_max_ts is not None and old_max_ts < run_started_ns, (
            f"readings up to seq {previous_n} changed: a ts from after this run started"
        )
    assert first_new[0] == previous_n + 1, f"this run's first seq is {first_new[0]}, expected {previous_n + 1}"
    assert first_new[1] >= run_started_ns, (
        f"seq {first_new[0]} has ts {first_new[1]}, before this run started ({run_started_ns})"
    )


def test_sigkill_during_heavy_ingest_never_loses_a_committed_reading(release_bin, spawn, write_config, state_dir):
    seed = int(os.environ.get("BIOTA_TEST_SEED", time.time_ns() % 1_000_000))
    rng = random.Random(seed)
    print(f"seed {seed} (set BIOTA_TEST_SEED to repeat)")
    config = write_config(sim_config(devices=DEVICES, points=POINTS, rate=RATE, commit_max_delay="20ms"))
    db = state_dir / "gateway.db"

    n = 0
    total_ingest_s = 0.0
    committed_after_observation = 0
    started = time.monotonic()
    for round_no in range(1, ROUNDS + 1):
        run_started_ns = time.time_ns()
        gw = spawn(release_bin, config, state_dir)
        ready_s = gw.wait_ready(timeout=30)
        ingest_s = rng.uniform(0.3, 1.5)
        time.sleep(ingest_s)
        committed = max_committed_seq(db)
        gw.sigkill()
        assert gw.wait_exit(timeout=10) == -signal.SIGKILL, f"round {round_no}: did not die of SIGKILL"
        assert "panicked" not in gw.stderr(), gw.stderr()
        gw.kill()

        assert committed > n, f"round {round_no}: nothing committed in {ingest_s:.2f}s (max seq still {n})"
        stats = assert_gapless(db)
        assert stats.max >= committed, (
            f"round {round_no}: seq {committed} was committed before the kill, only {stats.max} survived"
        )
        check_continuation(db, n, run_started_ns)
        print(
            f"round {round_no:2}: ready {ready_s * 1000:5.0f} ms, ingest {ingest_s:.2f} s, "
            f"seen committed {committed - n:8,} -> kept {stats.max - n:8,} (seq {n + 1}..{stats.max})"
        )
        committed_after_observation += stats.max - committed
        total_ingest_s += ingest_s
        n = stats.max

    # A clean stop at the end: everything accepted is committed, exit 0.
    run_started_ns = time.time_ns()
    gw = spawn(release_bin, config, state_dir)
    gw.wait_ready(timeout=30)
    time.sleep(1.0)
    committed = max_committed_seq(db)
    assert gw.stop(timeout=40) == 0, f"SIGTERM exit code; stderr:\n{gw.stderr()}"
    assert "STOPPING=1" in gw.messages()
    assert "panicked" not in gw.stderr()
    stats = assert_gapless(db)
    assert stats.max >= committed > n
    check_continuation(db, n, run_started_ns)

    elapsed = time.monotonic() - started
    size_mb = sum(p.stat().st_size for p in state_dir.iterdir() if p.is_file()) / 1e6
    print(
        f"{ROUNDS} SIGKILLs + 1 SIGTERM in {elapsed:.1f} s: {stats.max:,} readings, seq 1..{stats.max} gapless, "
        f"{n / total_ingest_s:,.0f} readings/s over the killed rounds, "
        f"{committed_after_observation:,} committed between observation and kill, database {size_mb:.0f} MB"
    )


def start_peak_rss_mb(pid: int) -> float:
    """The process's peak resident memory so far (VmHWM), in MB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def test_a_crash_loop_never_slows_the_start_or_grows_its_memory(release_bin, spawn, write_config, state_dir):
    """Issue #15: over 100 SIGKILLs during max-rate ingest the series
    index's backlog grew to 8M readings, which every start loaded into
    memory: READY went from 125 ms to 1.9 s and start RSS from 45 to 235
    MiB (an OOM kill at every start under MemoryMax). A start must take
    the same time and memory however the last run ended: measured at READY
    (peak RSS, VmHWM), each round compared with a start after a clean stop
    (ratios with wide margins: a loaded machine must not fail this)."""
    rounds = int(os.environ.get("BIOTA_CRASH_LOOP_ROUNDS", "40"))
    config = write_config(sim_config(devices=DEVICES, points=POINTS, rate=RATE, commit_max_delay="20ms"))
    db = state_dir / "gateway.db"

    def start_and_measure():
        gw = spawn(release_bin, config, state_dir)
        ready_s = gw.wait_ready(timeout=60)
        return gw, ready_s, start_peak_rss_mb(gw.pid)

    # The reference: a start after a clean stop.
    gw, _, _ = start_and_measure()
    time.sleep(1.0)
    assert gw.stop(timeout=60) == 0, gw.stderr()
    gw, clean_ready_s, clean_rss = start_and_measure()
    time.sleep(0.5)
    assert gw.stop(timeout=60) == 0, gw.stderr()

    samples = []
    for round_no in range(1, rounds + 1):
        gw, ready_s, rss = start_and_measure()
        samples.append((ready_s, rss))
        time.sleep(0.6)
        gw.sigkill()
        gw.wait_exit(timeout=10)
        assert "panicked" not in gw.stderr(), gw.stderr()
        gw.kill()
    unindexed = open_db_ro(db).execute(
        "SELECT max(seq) - (SELECT value FROM meta WHERE key = 'indexed_upto') FROM readings"
    ).fetchone()[0]
    stats = assert_gapless(db)
    late = samples[-10:]
    late_ready = sorted(s[0] for s in late)[len(late) // 2]
    late_rss = max(s[1] for s in late)
    print(
        f"clean stop: READY {clean_ready_s * 1000:.0f} ms, start peak RSS {clean_rss:.1f} MB; "
        f"after {rounds} SIGKILLs ({stats.max:,} readings, {unindexed:,} not yet in the series index): "
        f"READY median {late_ready * 1000:.0f} ms, start peak RSS max {late_rss:.1f} MB"
    )
    assert late_rss <= clean_rss * 1.5 + 20, (
        f"start memory grows with the crashes: {late_rss:.1f} MB after {rounds} SIGKILLs, "
        f"{clean_rss:.1f} MB after a clean stop ({[round(s[1]) for s in samples]})"
    )
    assert late_ready <= clean_ready_s * 4 + 0.5, (
        f"the start slows with the crashes: READY {late_ready:.2f} s after {rounds} SIGKILLs, "
        f"{clean_ready_s:.2f} s after a clean stop ({[round(s[0], 2) for s in samples]})"
    )
