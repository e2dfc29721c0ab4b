"""Shared helpers of the hardware-in-the-loop tests: they drive the built
`biota-gateway` binary as a process, the way systemd does.

- `gateway_bin` / `release_bin`: the binary under test. `BIOTA_GATEWAY_BIN`
  (set by scripts/test to the release build) wins; otherwise
  target/release, then target/debug, built with cargo if absent.
- `state_dir`, `write_config`: a fresh state directory and config files.
- `spawn`: starts `biota-gateway run` as a `Gateway` with its own
  `$NOTIFY_SOCKET` (a datagram socket this test owns) and kills whatever is
  still running when the test ends.
- `open_db_ro`, `seq_stats`, `run_query`: read the database directly with
  Python's sqlite3 (read-only, beside the writer in WAL mode), and through
  `biota-gateway query`.
- `mount_tmpfs`: tiny or read-only file systems (we run as root), unmounted
  at the end of the test.

Nothing here is skipped: a missing binary or tool is a failure.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

EXIT_OK = 0
EXIT_STORE = 74
EXIT_CONFIG = 78

# Variables a surrounding systemd or shell may have set that would change
# what the gateway does; every process a test starts gets its own.
_SCRUBBED_ENV = (
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "STATE_DIRECTORY",
    "JOURNAL_STREAM",
    "BIOTA_LOG",
    "LISTEN_FDS",
    "LISTEN_PID",
)

ANSI_RE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def strip_ansi(text: str) -> str:
    return ANSI_RE.sub("", text)


def base_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED_ENV}
    env.update(extra or {})
    return env


# ---------------------------------------------------------------------------
# The binary
# ---------------------------------------------------------------------------


def target_dir() -> Path:
    configured = os.environ.get("CARGO_TARGET_DIR")
    if not configured:
        return REPO / "target"
    path = Path(configured)
    return path if path.is_absolute() else REPO / path


def _cargo_build(release: bool, package: str = "biota-gateway") -> None:
    cmd = ["cargo", "build", "-p", package] + (["--release"] if release else [])
    print(f"building {package}: {' '.join(cmd)}")
    subprocess.run(cmd, cwd=REPO, check=True, stdin=subprocess.DEVNULL)


def _existing(path: Path) -> Path | None:
    return path if path.is_file() and os.access(path, os.X_OK) else None


def _from_env(name: str) -> Path | None:
    value = os.environ.get(name)
    if not value:
        return None
    path = Path(value)
    assert _existing(path), f"${name} = {value} is not an executable file"
    return path


@pytest.fixture(scope="session")
def gateway_bin() -> Path:
    """The binary under test: $BIOTA_GATEWAY_BIN, else target/release, else
    target/debug (built if neither exists)."""
    path = _from_env("BIOTA_GATEWAY_BIN")
    if path is None:
        path = _existing(target_dir() / "release" / "biota-gateway") or _existing(
            target_dir() / "debug" / "biota-gateway"
        )
    if path is None:
        _cargo_build(release=False)
        path = _existing(target_dir() / "debug" / "biota-gateway")
    assert path, "no biota-gateway binary, and cargo build did not produce one"
    print(f"biota-gateway under test: {path}")
    return path


@pytest.fixture(scope="session")
def release_bin() -> Path:
    """An optimized binary, for tests whose point needs a realistic ingest
    rate: $BIOTA_GATEWAY_BIN (scripts/test sets it to the release build),
    else target/release, built if absent."""
    path = _from_env("BIOTA_GATEWAY_BIN")
    if path is None:
        path = _existing(target_dir() / "release" / "biota-gateway")
    if path is None:
        _cargo_build(release=True)
        path = _existing(target_dir() / "release" / "biota-gateway")
    assert path, "no release biota-gateway binary, and cargo build --release did not produce one"
    print(f"biota-gateway (release) under test: {path}")
    return path


@pytest.fixture(scope="session")
def dev_bin() -> Path:
    """The developer tools (`biota-dev`: demo, bench): $BIOTA_DEV_BIN
    (scripts/test sets it to the release build), else target/release,
    built if absent. The demo finds biota-gateway beside it."""
    path = _from_env("BIOTA_DEV_BIN")
    if path is None:
        path = _existing(target_dir() / "release" / "biota-dev")
    if path is None:
        _cargo_build(release=True, package="biota-dev")
        path = _existing(target_dir() / "release" / "biota-dev")
    assert path, "no release biota-dev binary, and cargo build --release did not produce one"
    print(f"biota-dev under test: {path}")
    return path


def run_cli(binary: Path, *args: str, timeout: float = 60, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    """Runs the binary to completion, capturing text output."""
    return subprocess.run(
        [str(binary), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        env=base_env(env),
        **kw,
    )


def assert_no_panic(stderr: str) -> None:
    assert "panicked" not in stderr, f"the gateway panicked:\n{stderr}"
    assert "RUST_BACKTRACE" not in stderr, f"the gateway panicked:\n{stderr}"


# ---------------------------------------------------------------------------
# State directory and configuration
# ---------------------------------------------------------------------------


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    path = tmp_path / "state"
    path.mkdir()
    return path


@pytest.fixture
def write_config(tmp_path: Path):
    """write_config(text, name="gateway.toml") -> path of the written file."""

    def write(text: str, name: str = "gateway.toml") -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return write


def sim_config(
    *,
    devices: int = 4,
    points: int = 25,
    rate: float = 2000,
    waveform: str = "counter",
    commit_max_delay: str = "20ms",
    extra: str = "",
) -> str:
    """A configuration of `devices` x `points` simulated points at `rate`
    samples/s each, with no retention limit (so seqs are exactly 1..N)."""
    return f"""\
[store]
commit_max_delay = "{commit_max_delay}"

[store.retention]
max_size = "off"

[[drivers.sim.devices]]
id = "line"
copies = {devices}
points = [{{ name = "p", copies = {points}, waveform = "{waveform}", rate = {rate} }}]
{extra}"""


# ---------------------------------------------------------------------------
# sd_notify: a datagram socket the gateway reports to
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Notice:
    at: float  # time.monotonic() when received
    line: str  # one assignment, e.g. "READY=1"


class NotifySocket:
    """A unix datagram socket like systemd's $NOTIFY_SOCKET; a background
    thread records every line of every datagram with its arrival time."""

    def __init__(self) -> None:
        # sun_path holds 108 bytes: pytest's tmp_path can be longer.
        self.dir = Path(tempfile.mkdtemp(prefix="biota-notify-"))
        self.path = self.dir / "notify.sock"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.path))
        self.sock.settimeout(0.1)
        self._notices: list[Notice] = []
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._receive, name="notify", daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._closed.is_set():
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                return
            at = time.monotonic()
            with self._lock:
                for line in data.decode("utf-8", "replace").split("\n"):
                    if line:
                        self._notices.append(Notice(at, line))

    def notices(self) -> list[Notice]:
        with self._lock:
            return list(self._notices)

    def close(self) -> None:
        self._closed.set()
        self._thread.join(timeout=2)
        self.sock.close()
        shutil.rmtree(self.dir, ignore_errors=True)


# ---------------------------------------------------------------------------
# The gateway process
# ---------------------------------------------------------------------------


class Gateway:
    """`biota-gateway run --config X --state-dir Y` with its own
    NOTIFY_SOCKET; stdout and stderr go to files next to the config."""

    _count = 0

    def __init__(
        self,
        binary: Path,
        config: Path,
        state_dir: Path,
        env: dict[str, str] | None = None,
        log_dir: Path | None = None,
    ) -> None:
        Gateway._count += 1
        self.binary = binary
        self.config = config
        self.state_dir = state_dir
        self.db = state_dir / "gateway.db"
        self.notify = NotifySocket()
        log_dir = log_dir or config.parent
        self.stdout_path = log_dir / f"gateway-{Gateway._count}.stdout"
        self.stderr_path = log_dir / f"gateway-{Gateway._count}.stderr"
        self._stdout = open(self.stdout_path, "wb")
        self._stderr = open(self.stderr_path, "wb")
        self.started_at = time.monotonic()
        self.started_wall_ns = time.time_ns()
        self.proc = subprocess.Popen(
            [str(binary), "run", "--config", str(config), "--state-dir", str(state_dir)],
            stdin=subprocess.DEVNULL,
            stdout=self._stdout,
            stderr=self._stderr,
            env=base_env({"NOTIFY_SOCKET": str(self.notify.path), **(env or {})}),
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    # -- notifications -----------------------------------------------------

    def notices(self) -> list[Notice]:
        return self.notify.notices()

    def messages(self) -> list[str]:
        """Every notification line received so far, in order."""
        return [n.line for n in self.notify.notices()]

    def count(self, line: str) -> int:
        return sum(1 for m in self.messages() if m == line)

    def wait_for(self, predicate, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            if self.proc.poll() is not None:
                time.sleep(0.2)  # a last datagram may still be in flight
                if predicate():
                    return
                raise AssertionError(
                    f"gateway exited with {self.proc.returncode} before {what}\n"
                    f"notifications: {self.messages()}\nstderr:\n{self.stderr()}"
                )
            time.sleep(0.02)
        raise AssertionError(
            f"no {what} within {timeout}s\nnotifications: {self.messages()}\nstderr:\n{self.stderr()}"
        )

    def wait_message(self, line: str, timeout: float = 30) -> None:
        self.wait_for(lambda: line in self.messages(), timeout, line)

    def wait_ready(self, timeout: float = 30) -> float:
        """Waits for READY=1; returns the seconds it took from the start."""
        self.wait_message("READY=1", timeout)
        ready = next(n for n in self.notices() if n.line == "READY=1")
        return ready.at - self.started_at

    # -- process control ---------------------------------------------------

    def alive(self) -> bool:
        return self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def sigterm(self) -> None:
        self.signal(signal.SIGTERM)

    def sigkill(self) -> None:
        self.signal(signal.SIGKILL)

    def wait_exit(self, timeout: float = 40) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"gateway still running {timeout}s later\nstderr:\n{self.stderr()}"
            ) from None

    def stop(self, timeout: float = 40) -> int:
        """SIGTERM and wait for the exit code."""
        self.sigterm()
        return self.wait_exit(timeout)

    def kill(self) -> None:
        """The finalizer: makes sure the process is gone."""
        if self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        self.notify.close()
        for f in (self._stdout, self._stderr):
            if not f.closed:
                f.close()

    # -- output ------------------------------------------------------------

    def stderr(self) -> str:
        return strip_ansi(self.stderr_path.read_text(errors="replace"))

    def stdout(self) -> str:
        return strip_ansi(self.stdout_path.read_text(errors="replace"))


@pytest.fixture
def spawn(tmp_path: Path, mount_tmpfs):
    """spawn(binary, config, state_dir, env=None) -> a running Gateway; every
    one is killed when the test ends, whatever happened.

    It depends on `mount_tmpfs` only so that it is torn down first: the
    processes die before their file systems are unmounted."""
    started: list[Gateway] = []

    def start(binary: Path, config: Path, state_dir: Path, env: dict[str, str] | None = None) -> Gateway:
        gw = Gateway(binary, config, state_dir, env=env, log_dir=tmp_path)
        started.append(gw)
        return gw

    yield start
    for gw in started:
        gw.kill()


# ---------------------------------------------------------------------------
# The database, read directly
# ---------------------------------------------------------------------------


def open_db_ro(db: Path, timeout: float = 10) -> sqlite3.Connection:
    """A read-only connection: it never checkpoints or recovers anything on
    the gateway's behalf (after a SIGKILL the WAL stays for the gateway)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=timeout, isolation_level=None)
    conn.execute("PRAGMA query_only = 1")
    return conn


def max_committed_seq(db: Path) -> int:
    """max(seq) visible to a reader right now: what is committed."""
    conn = open_db_ro(db)
    try:
        return conn.execute("SELECT coalesce(max(seq), 0) FROM readings").fetchone()[0]
    finally:
        conn.close()


@dataclass(frozen=True)
class SeqStats:
    count: int
    min: int | None
    max: int | None
    next_seq: int | None
    integrity: str


def seq_stats(db: Path, integrity: bool = True) -> SeqStats:
    conn = open_db_ro(db)
    try:
        # One read transaction: one snapshot, even while the gateway commits.
        conn.execute("BEGIN")
        check = conn.execute("PRAGMA integrity_check").fetchall() if integrity else [("skipped",)]
        count, lo, hi = conn.execute("SELECT count(*), min(seq), max(seq) FROM readings").fetchone()
        row = conn.execute("SELECT value FROM meta WHERE key = 'next_seq'").fetchone()
        conn.execute("COMMIT")
        return SeqStats(
            count=count,
            min=lo,
            max=hi,
            next_seq=row[0] if row else None,
            integrity="\n".join(str(r[0]) for r in check),
        )
    finally:
        conn.close()


def assert_gapless(db: Path, integrity: bool = True) -> SeqStats:
    """integrity_check ok, readings hold exactly seq 1..N, next_seq = N+1."""
    s = seq_stats(db, integrity=integrity)
    if integrity:
        assert s.integrity == "ok", f"integrity_check: {s.integrity}"
    n = s.max or 0
    assert s.count == n, f"{s.count} readings but max(seq) = {n}: gaps or missing rows"
    if n:
        assert s.min == 1, f"seq starts at {s.min}, not 1"
    assert s.next_seq == n + 1, f"meta next_seq = {s.next_seq}, expected {n + 1}"
    return s


# ---------------------------------------------------------------------------
# biota-gateway query
# ---------------------------------------------------------------------------


def run_query(binary: Path, db: Path, *args: str, fmt: str = "json", timeout: float = 60) -> subprocess.CompletedProcess:
    """`biota-gateway query --db DB --format FMT ARGS...`, exit 0 asserted."""
    result = run_cli(binary, "query", "--db", db, "--format", fmt, *args, timeout=timeout)
    assert result.returncode == 0, (
        f"query {' '.join(map(str, args))} exited {result.returncode}\nstderr:\n{result.stderr}"
    )
    assert_no_panic(result.stderr)
    return result


# ---------------------------------------------------------------------------
# File systems
# ---------------------------------------------------------------------------


@pytest.fixture
def mount_tmpfs(tmp_path: Path):
    """mount_tmpfs(name, size="64k", ro=False) -> a tmpfs mounted at
    tmp_path/name; read_only_remount(path) turns a mount read-only.
    Everything is unmounted when the test ends."""
    mounts: list[Path] = []

    def mount(name: str, size: str = "64k") -> Path:
        path = tmp_path / name
        path.mkdir()
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
            check=True,
            capture_output=True,
        )
        mounts.append(path)
        return path

    def bind_read_only(source: Path, name: str) -> Path:
        path = tmp_path / name
        path.mkdir()
        subprocess.run(["mount", "--bind", str(source), str(path)], check=True, capture_output=True)
        mounts.append(path)
        subprocess.run(["mount", "-o", "remount,bind,ro", str(path)], check=True, capture_output=True)
        return path

    mount.bind_read_only = bind_read_only  # type: ignore[attr-defined]
    yield mount
    for path in reversed(mounts):
        result = subprocess.run(["umount", str(path)], capture_output=True)
        if result.returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill_disk(directory: Path, name: str = "filler", chunk: int = 4096) -> Path:
    """Writes a file until the file system is full; returns its path."""
    path = directory / name
    block = b"\xa5" * chunk
    with open(path, "wb", buffering=0) as f:
        try:
            while True:
                f.write(block)
        except OSError:
            pass
    return path


# ---------------------------------------------------------------------------
# The demo with its API (console and schema tests)
# ---------------------------------------------------------------------------


def start_demo(binary: Path, state_dir: Path, duration: str = "120s"):
    """Starts `biota-dev demo` (`binary`) and returns (process, console url, token);
    `process.anvil_rpc` is the demo's local chain (None without anvil)."""
    demo = subprocess.Popen(
        [str(binary), "demo", "--duration", duration, "--state-dir", str(state_dir)],
        cwd=REPO,  # the demo finds anvil in hil-tests/node_modules
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        env=base_env(),
    )
    demo.anvil_rpc = None
    seen = []
    deadline = time.monotonic() + 30
    assert demo.stdout is not None
    while time.monotonic() < deadline:
        line = demo.stdout.readline()
        if not line:
            break
        seen.append(line)
        chain = re.search(r"anchoring\s+local chain \(anvil\) at (http://\S+),", line)
        if chain:
            demo.anvil_rpc = chain.group(1)
        match = re.search(r"web console\s+(http://\S+)\s+token \(read \+ write\): (bgw_[0-9a-f]{64})", line)
        if match:
            # Keep reading its live lines, or a full pipe would stall it.
            threading.Thread(target=lambda: [None for _ in demo.stdout], daemon=True).start()
            return demo, match.group(1), match.group(2)
    demo.kill()
    raise AssertionError("the demo printed no console URL and token:\n" + "".join(seen))


def stop_demo(demo: subprocess.Popen) -> None:
    demo.send_signal(signal.SIGINT)
    try:
        demo.wait(timeout=30)
    except subprocess.TimeoutExpired:
        demo.kill()
        raise
