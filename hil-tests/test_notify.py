"""The gateway under systemd's notify protocol, with a socket we own as
$NOTIFY_SOCKET: READY=1 once it can be queried, periodic STATUS=, a
watchdog fed only while the writer makes progress (a second process holding
the database's write lock stalls it), and STOPPING=1 with a clean exit on
SIGTERM with every accepted reading committed.
"""

from __future__ import annotations

import json
import sqlite3
import time

from conftest import assert_gapless, max_committed_seq, run_query, sim_config

WATCHDOG_USEC = 2_000_000
STALL_S = 6.0
# A ping may legitimately arrive shortly after the stall begins (the writer
# was alive within the last check interval); none may arrive after this.
GRACE_S = 1.5


def pings(gw, after: float = 0.0, before: float = float("inf")) -> list[float]:
    return [n.at for n in gw.notices() if n.line == "WATCHDOG=1" and after <= n.at <= before]


def test_ready_status_watchdog_stall_and_clean_stop(gateway_bin, spawn, write_config, state_dir):
    config = write_config(sim_config(devices=2, points=10, rate=1000, commit_max_delay="20ms"))
    db = state_dir / "gateway.db"
    gw = spawn(gateway_bin, config, state_dir, env={"WATCHDOG_USEC": str(WATCHDOG_USEC)})

    # READY=1, and at that point the store can be queried.
    gw.wait_ready(timeout=15)
    result = run_query(gateway_bin, db, "latest")
    assert isinstance(json.loads(result.stdout), list)

    # STATUS= lines keep coming (about every 2 s) and watchdog pings every
    # WATCHDOG_USEC/2 while healthy.
    gw.wait_for(lambda: sum(m.startswith("STATUS=") for m in gw.messages()) >= 3, 8, "three STATUS= lines")
    gw.wait_for(lambda: len(pings(gw)) >= 3, 5, "three WATCHDOG=1 pings")
    healthy = pings(gw)
    gaps = [b - a for a, b in zip(healthy, healthy[1:])]
    assert max(gaps) < WATCHDOG_USEC / 1e6 * 0.95, f"pings too far apart for a {WATCHDOG_USEC} us watchdog: {gaps}"
    assert gw.count("READY=1") == 1

    # Another process takes the write lock: the writer cannot commit, so
    # the watchdog must starve (systemd would restart a stuck gateway).
    lock = sqlite3.connect(db, timeout=10, isolation_level=None)
    try:
        lock.execute("BEGIN IMMEDIATE")
        stall_start = time.monotonic()
        committed_at_stall = max_committed_seq(db)
        time.sleep(STALL_S)
        committed_during_stall = max_committed_seq(db)
        stall_end = time.monotonic()
        lock.execute("ROLLBACK")
    finally:
        lock.close()
    assert gw.alive(), f"the gateway died while the database was locked:\n{gw.stderr()}"
    assert committed_during_stall == committed_at_stall, "the stall did not hold the writer (commits went on)"
    starved = pings(gw, after=stall_start + GRACE_S, before=stall_end)
    assert not starved, (
        f"WATCHDOG=1 sent {[round(t - stall_start, 2) for t in starved]} s into a {STALL_S} s write stall"
    )

    # Released: commits and pings resume.
    gw.wait_for(lambda: max_committed_seq(db) > committed_at_stall, 15, "commits after the stall")
    gw.wait_for(lambda: len(pings(gw, after=stall_end)) >= 2, 10, "WATCHDOG=1 pings after the stall")
    assert_gapless(db, integrity=False)

    # SIGTERM: STOPPING=1, exit 0, every accepted reading committed.
    time.sleep(0.5)
    committed = max_committed_seq(db)
    code = gw.stop(timeout=40)
    assert code == 0, f"exit code {code} after SIGTERM\nstderr:\n{gw.stderr()}"
    assert "STOPPING=1" in gw.messages(), gw.messages()
    assert gw.count("READY=1") == 1
    stats = assert_gapless(db)
    assert stats.max >= committed
    assert "panicked" not in gw.stderr()
    around = [round(t - stall_start, 2) for t in pings(gw, after=stall_start - 3, before=stall_end + 4)]
    print(f"WATCHDOG=1 at {around} s from the stall's start (stall ends at {stall_end - stall_start:.2f} s)")
    print(f"stall held {STALL_S}s; {stats.max:,} readings, seq gapless; notifications: {len(gw.messages())}")


def test_watchdog_is_off_without_watchdog_usec_or_for_another_pid(gateway_bin, spawn, write_config, tmp_path):
    config = write_config(sim_config(devices=1, points=2, rate=100))
    states = [tmp_path / "plain", tmp_path / "other-pid"]
    plain = spawn(gateway_bin, config, states[0])
    other = spawn(gateway_bin, config, states[1], env={"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"})
    for gw in (plain, other):
        gw.wait_ready(timeout=15)
    time.sleep(2.5)
    for gw, what in ((plain, "without WATCHDOG_USEC"), (other, "with WATCHDOG_PID of another process")):
        assert not pings(gw), f"WATCHDOG=1 sent {what}: {gw.messages()}"
        assert any(m.startswith("STATUS=") for m in gw.messages())
        assert gw.stop() == 0, gw.stderr()
        assert "STOPPING=1" in gw.messages()
