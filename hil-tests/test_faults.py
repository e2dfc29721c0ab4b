"""Faults an installer or a full disk brings, against the real binary:

(a) bad configuration files: `check-config` and `run` exit 78 naming the
    file, the line and the key path; never a panic;
(b) a read-only state directory and (c) a full disk at start: exit 74, a
    clear error naming the path and the reason, and no READY=1;
(d) the disk filling up while ingesting: no crash, a clear disk-full error,
    no second READY=1, ingest resumes once space is freed, and a clean
    SIGTERM afterwards leaves a sound, gapless database.

(b)-(d) mount tmpfs file systems (the tests run as root), unmounted when
each test ends.
"""

from __future__ import annotations

import re
import time

import pytest

from conftest import (
    EXIT_CONFIG,
    EXIT_STORE,
    assert_gapless,
    assert_no_panic,
    fill_disk,
    max_committed_seq,
    run_cli,
    sim_config,
)

SIM_DEVICE = """
[[drivers.sim.devices]]
id = "press-1"
points = [{ name = "temp", waveform = "sine", rate = 10, min = 0, max = 100, period = 10 }]
"""

# (name, file text, line of the error, key path, a word of the reason)
BAD_CONFIGS = [
    (
        "unknown_key",
        '[store]\ncommit_max_delay = "20ms"\ncomit_max_readings = 5\n' + SIM_DEVICE,
        3,
        "store.comit_max_readings",
        "unknown",
    ),
    (
        "unknown_key_in_device",
        SIM_DEVICE + 'colour = "red"\n',
        5,
        "drivers.sim.devices[0].colour",
        "unknown",
    ),
    (
        "bad_duration",
        '[store]\ncommit_max_delay = "fast"\n' + SIM_DEVICE,
        2,
        "store.commit_max_delay",
        "duration",
    ),
    (
        "bad_type",
        "[store]\ncommit_max_readings = \"many\"\n" + SIM_DEVICE,
        2,
        "store.commit_max_readings",
        "",
    ),
    (
        "bad_rate",
        '\n[[drivers.sim.devices]]\nid = "a"\npoints = [{ name = "p", waveform = "counter", rate = -1 }]\n',
        4,
        "drivers.sim.devices[0].points[0].rate",
        "",
    ),
    (
        "invalid_toml",
        '[store]\ncommit_max_delay = "20ms"\n[pipeline\nqueue_capacity = 4\n',
        3,
        None,
        "TOML",
    ),
    (
        "undefined_profile",
        '[profiles.press]\ntimestamp = "device"\n\n[[drivers.sim.devices]]\nid = "a"\nprofile = "presss"\n'
        'points = [{ name = "p", waveform = "counter", rate = 1 }]\n',
        6,
        "drivers.sim.devices[0].profile",
        "presss",
    ),
]


@pytest.mark.parametrize(
    "text,line,key,reason", [c[1:] for c in BAD_CONFIGS], ids=[c[0] for c in BAD_CONFIGS]
)
@pytest.mark.parametrize("command", ["check-config", "run"])
def test_bad_config_exits_78_naming_file_line_and_key(
    gateway_bin, write_config, state_dir, spawn, command, text, line, key, reason
):
    config = write_config(text)
    if command == "check-config":
        result = run_cli(gateway_bin, "check-config", config, timeout=30)
        code, stderr = result.returncode, result.stderr
    else:
        gw = spawn(gateway_bin, config, state_dir)
        code = gw.wait_exit(timeout=30)
        stderr = gw.stderr()
        assert "READY=1" not in gw.messages()
        assert not (state_dir / "gateway.db").exists(), "a bad config must not touch the store"
    assert_no_panic(stderr)
    assert code == EXIT_CONFIG, f"{command}: exit {code}, expected {EXIT_CONFIG}\nstderr:\n{stderr}"
    location = f"{config}:{line}:"
    assert location in stderr, f"{command}: stderr does not name {location}\nstderr:\n{stderr}"
    if key:
        pattern = re.escape(location) + r"\s*" + re.escape(key) + r"\b"
        assert re.search(pattern, stderr), f"{command}: stderr does not say `{location} {key}`\nstderr:\n{stderr}"
    assert reason in stderr, f"{command}: stderr does not give the reason ({reason!r})\nstderr:\n{stderr}"


def test_missing_config_file_exits_78_naming_it(gateway_bin, tmp_path, state_dir, spawn):
    missing = tmp_path / "no-such.toml"
    result = run_cli(gateway_bin, "check-config", missing, timeout=30)
    assert result.returncode == EXIT_CONFIG, result.stderr
    assert str(missing) in result.stderr
    assert_no_panic(result.stderr)
    gw = spawn(gateway_bin, missing, state_dir)
    assert gw.wait_exit(timeout=30) == EXIT_CONFIG
    assert str(missing) in gw.stderr()


# ---------------------------------------------------------------------------
# The store cannot be opened or written at start
# ---------------------------------------------------------------------------


def assert_refused_store(gw, path, *reason_words: str) -> str:
    code = gw.wait_exit(timeout=30)
    stderr = gw.stderr()
    assert_no_panic(stderr)
    assert code == EXIT_STORE, f"exit {code}, expected {EXIT_STORE}\nstderr:\n{stderr}"
    assert "READY=1" not in gw.messages(), f"READY=1 sent by a gateway without a store: {gw.messages()}"
    assert str(path) in stderr, f"stderr does not name {path}\nstderr:\n{stderr}"
    lowered = stderr.lower()
    assert any(w.lower() in lowered for w in reason_words), (
        f"stderr does not give the reason (any of {reason_words})\nstderr:\n{stderr}"
    )
    return stderr


def test_read_only_empty_state_directory_exits_74(gateway_bin, write_config, spawn, mount_tmpfs):
    config = write_config(sim_config(devices=1, points=1, rate=10))
    source = mount_tmpfs("src", size="1m")
    state = mount_tmpfs.bind_read_only(source, "state-ro")
    gw = spawn(gateway_bin, config, state)
    assert_refused_store(gw, state, "read-only")
    assert not (state / "gateway.db").exists()


def test_read_only_state_directory_with_existing_database_exits_74(gateway_bin, write_config, spawn, mount_tmpfs):
    config = write_config(sim_config(devices=1, points=2, rate=100))
    source = mount_tmpfs("src", size="4m")
    first = spawn(gateway_bin, config, source)
    first.wait_ready(timeout=15)
    time.sleep(0.5)
    assert first.stop() == 0, first.stderr()
    before = assert_gapless(source / "gateway.db")
    assert before.max and before.max > 0

    state = mount_tmpfs.bind_read_only(source, "state-ro")
    gw = spawn(gateway_bin, config, state)
    assert_refused_store(gw, state / "gateway.db", "read-only")
    after = assert_gapless(source / "gateway.db")
    assert after == before, "the refused start changed the database"


def test_full_disk_at_start_exits_74(gateway_bin, write_config, spawn, mount_tmpfs):
    config = write_config(sim_config(devices=1, points=1, rate=10))
    disk = mount_tmpfs("disk", size="64k")
    fill_disk(disk)
    gw = spawn(gateway_bin, config, disk)
    assert_refused_store(gw, disk / "gateway.db", "disk is full", "no space left")


# ---------------------------------------------------------------------------
# The disk fills up while ingesting
# ---------------------------------------------------------------------------

DISK_SIZE = "16m"
FILLER_BYTES = 8 * 1024 * 1024
DISK_FULL_RE = re.compile(r"disk is full|no space left", re.I)


def test_disk_full_while_ingesting_recovers_when_space_is_freed(release_bin, write_config, spawn, mount_tmpfs):
    # ~20,000 readings/s fill the remaining space within seconds.
    config = write_config(sim_config(devices=2, points=10, rate=1000, commit_max_delay="20ms"))
    disk = mount_tmpfs("disk", size=DISK_SIZE)
    filler = disk / "filler"
    filler.write_bytes(b"\x5a" * FILLER_BYTES)
    db = disk / "gateway.db"

    gw = spawn(release_bin, config, disk)
    gw.wait_ready(timeout=15)
    gw.wait_for(lambda: DISK_FULL_RE.search(gw.stderr()), 60, "a disk-full error in the log")
    full_at = time.monotonic()
    time.sleep(1.0)
    assert gw.alive(), f"the gateway exited on a full disk (code {gw.proc.returncode})\n{gw.stderr()}"
    seq_when_full = max_committed_seq(db)
    assert seq_when_full > 0
    assert gw.count("READY=1") == 1, f"READY=1 sent again: {gw.messages()}"

    # Free space: committing resumes without a restart.
    filler.unlink()
    gw.wait_for(lambda: max_committed_seq(db) > seq_when_full + 1000, 20, "commits after space was freed")
    resumed_after = time.monotonic() - full_at
    assert gw.alive()
    assert gw.count("READY=1") == 1, f"READY=1 sent again: {gw.messages()}"

    committed = max_committed_seq(db)
    code = gw.stop(timeout=40)
    stderr = gw.stderr()
    assert_no_panic(stderr)
    assert code == 0, f"exit {code} after SIGTERM\nstderr:\n{stderr}"
    stats = assert_gapless(db)
    assert stats.max >= committed
    print(
        f"disk full at seq {seq_when_full:,}; resumed {resumed_after:.1f} s later; "
        f"stopped cleanly at seq {stats.max:,}"
    )
