"""Configuration, files, permissions and logs (issue #15, items 7-11):

- check-config checks the files a configuration names (TLS certificates
  and keys, the anchoring key, the API's token file), and both it and
  `run` exit 78 when one is missing or unusable (a start that fails with 1
  is restarted by systemd every 5 s for ever);
- a duplicate key is reported with its key path;
- the database files are created 0640 whatever the umask, and a token
  file every user can read is refused;
- writing through the control socket needs root, the service's user or
  `[control] write_group`; reading status does not;
- logs written to a file carry no colour escapes.
"""

from __future__ import annotations

import grp
import os
import pwd
import signal
import stat
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from conftest import EXIT_CONFIG, base_env, run_cli

SIM = """
[[drivers.sim.devices]]
id = "d"
points = [{ name = "p", waveform = "counter", rate = 50 }]
"""


def check(gateway_bin: Path, config: Path, state_dir: Path) -> subprocess.CompletedProcess:
    return run_cli(gateway_bin, "check-config", config, "--state-dir", state_dir)


def run_exit(gateway_bin: Path, config: Path, state_dir: Path) -> subprocess.CompletedProcess:
    return run_cli(gateway_bin, "run", "--config", config, "--state-dir", state_dir, timeout=30)


@pytest.mark.parametrize(
    "name, section, key",
    [
        ("api certificate missing", '[api]\ntls = {{ cert = "{d}/none.pem", key = "{d}/none.key" }}\n', "api.tls"),
        ("uplink CA missing", '[uplink]\nbroker = "127.0.0.1:1"\ntls = {{ ca = "{d}/none.pem" }}\n', "uplink.tls"),
        (
            "broker key missing",
            '[drivers.mqtt.broker]\nlisten = "127.0.0.1:0"\n'
            'tls = {{ listen = "127.0.0.1:0", cert = "{d}/none.pem", key = "{d}/none.key" }}\n',
            "drivers.mqtt.broker.tls",
        ),
        (
            "anchor key missing",
            '[anchor]\nbackend = "evm"\n[anchor.evm]\nrpc = "http://127.0.0.1:1"\n'
            'contract = "0x5FbDB2315678afecb367f032d93F642f64180aa3"\nkey_file = "missing.key"\n',
            "anchor.evm.key_file",
        ),
        ("token file unreadable", '[api]\ntoken_file = "{d}"\n', "api.token_file"),
    ],
)
def test_a_file_the_configuration_names_is_checked(gateway_bin, write_config, state_dir, tmp_path, name, section, key):
    config = write_config(SIM + section.format(d=tmp_path))
    checked = check(gateway_bin, config, state_dir)
    assert checked.returncode == EXIT_CONFIG, f"{name}: {checked.returncode}\n{checked.stdout}{checked.stderr}"
    assert key in checked.stderr, checked.stderr
    ran = run_exit(gateway_bin, config, state_dir)
    assert ran.returncode == EXIT_CONFIG, f"{name}: run exited {ran.returncode}\n{ran.stderr}"
    assert key in ran.stderr, ran.stderr


def test_a_token_file_every_user_can_read_is_refused(gateway_bin, write_config, state_dir):
    state_dir.mkdir(parents=True, exist_ok=True)
    tokens = state_dir / "tokens.json"
    tokens.write_text('{"tokens": []}\n')
    tokens.chmod(0o644)
    config = write_config(SIM + "[api]\n")
    checked = check(gateway_bin, config, state_dir)
    assert checked.returncode == EXIT_CONFIG, checked.stderr
    assert "api.token_file" in checked.stderr and "0644" in checked.stderr, checked.stderr
    tokens.chmod(0o600)
    assert check(gateway_bin, config, state_dir).returncode == 0


def test_a_duplicate_key_is_named_with_its_path(gateway_bin, write_config, state_dir):
    config = write_config('[store]\npath = "a.db"\ncache_mib = 8\npath = "b.db"\n')
    checked = check(gateway_bin, config, state_dir)
    assert checked.returncode == EXIT_CONFIG
    assert ":4: store.path: invalid TOML: duplicate key" in checked.stderr, checked.stderr


def test_database_files_are_private_whatever_the_umask(gateway_bin, write_config, state_dir):
    config = write_config(SIM + "[store]\nsynchronous = \"normal\"\n")
    gw = subprocess.Popen(
        [str(gateway_bin), "run", "--config", str(config), "--state-dir", str(state_dir)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=base_env(),
        preexec_fn=lambda: os.umask(0o022),
    )
    try:
        db = state_dir / "gateway.db"
        deadline = time.monotonic() + 30
        while not all(Path(f"{db}{s}").exists() for s in ("", "-wal", "-shm")):
            assert time.monotonic() < deadline and gw.poll() is None, "the gateway did not create its files"
            time.sleep(0.1)
        modes = {s or "db": stat.S_IMODE(os.stat(f"{db}{s}").st_mode) for s in ("", "-wal", "-shm")}
        assert modes == {"db": 0o640, "-wal": 0o640, "-shm": 0o640}, {k: oct(v) for k, v in modes.items()}
        assert stat.S_IMODE(os.stat(state_dir / "control.sock").st_mode) == 0o660
    finally:
        gw.send_signal(signal.SIGTERM)
        gw.wait(timeout=30)
    # A database left readable by everyone (an earlier run) is made private.
    os.chmod(db, 0o644)
    gw = subprocess.Popen(
        [str(gateway_bin), "run", "--config", str(config), "--state-dir", str(state_dir)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=base_env(),
    )
    try:
        deadline = time.monotonic() + 30
        while stat.S_IMODE(os.stat(db).st_mode) != 0o640:
            assert time.monotonic() < deadline, oct(stat.S_IMODE(os.stat(db).st_mode))
            time.sleep(0.1)
    finally:
        gw.send_signal(signal.SIGTERM)
        gw.wait(timeout=30)


def test_logs_to_a_file_carry_no_colour(gateway_bin, spawn, write_config, state_dir):
    gw = spawn(gateway_bin, write_config(SIM), state_dir)
    gw.wait_ready(timeout=30)
    assert gw.stop(timeout=30) == 0
    log = gw.stderr_path.read_text(errors="replace")  # as written, not stripped
    assert "gateway ready" in log, log
    assert "\x1b[" not in log, f"colour escapes in a log file: {log[:300]!r}"


@pytest.fixture
def strangers():
    """Two users of our own: `biota-w` in the group `biota-writers`, and
    `biota-r`, in no group of ours. Removed afterwards."""
    made = []
    for cmd in (
        ["groupadd", "-f", "biota-writers"],
        ["useradd", "-M", "-N", "-s", "/usr/sbin/nologin", "-G", "biota-writers", "biota-w"],
        ["useradd", "-M", "-N", "-s", "/usr/sbin/nologin", "biota-r"],
    ):
        out = subprocess.run(cmd, capture_output=True, text=True)
        assert out.returncode in (0, 9), out.stderr  # 9: exists already
        made.append(cmd)
    yield pwd.getpwnam("biota-w"), pwd.getpwnam("biota-r"), grp.getgrnam("biota-writers")
    for user in ("biota-w", "biota-r"):
        subprocess.run(["userdel", user], capture_output=True)
    subprocess.run(["groupdel", "biota-writers"], capture_output=True)


def as_user(gateway_bin: Path, user: pwd.struct_passwd, groups: list[int], *args: str) -> subprocess.CompletedProcess:
    cmd = [
        "setpriv",
        f"--reuid={user.pw_uid}",
        f"--regid={user.pw_gid}",
        "--groups=" + ",".join(map(str, groups)) if groups else "--clear-groups",
        str(gateway_bin),
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=base_env())


def test_writing_through_the_control_socket_is_a_separate_permission(gateway_bin, spawn, write_config, tmp_path, strangers):
    writer, reader, writers = strangers
    # A state directory every user can reach, the socket in a group both
    # test users are in (as the service's group would be).
    state_dir = Path(tempfile.mkdtemp(prefix="biota-ctl-", dir="/tmp"))
    state_dir.chmod(0o755)
    config = write_config(SIM + '[control]\nwrite_group = "biota-writers"\n')
    gw = spawn(gateway_bin, config, state_dir)
    gw.wait_ready(timeout=30)
    sock = state_dir / "control.sock"
    socket_group = grp.getgrnam("nogroup").gr_gid
    os.chown(sock, 0, socket_group)
    try:
        devices = as_user(gateway_bin, reader, [socket_group], "devices", "--state-dir", str(state_dir), "--json")
        assert devices.returncode == 0, devices.stderr
        refused = as_user(gateway_bin, reader, [socket_group], "write", "--state-dir", str(state_dir), "--json", "d", "p", "1")
        assert refused.returncode != 0
        assert '"kind":"forbidden"' in refused.stdout, refused.stdout + refused.stderr
        allowed = as_user(
            gateway_bin, writer, [socket_group, writers.gr_gid], "write", "--state-dir", str(state_dir), "--json", "d", "p", "1"
        )
        # Allowed to ask: the sim driver takes no writes, which is the
        # error the command path gives, after the permission check.
        assert '"kind":"read_only_device"' in allowed.stdout, allowed.stdout + allowed.stderr
        root = run_cli(gateway_bin, "write", "--state-dir", str(state_dir), "--json", "d", "p", "1")
        assert '"kind":"read_only_device"' in root.stdout, root.stdout + root.stderr
    finally:
        gw.stop(timeout=30)
