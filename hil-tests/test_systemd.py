"""The systemd integration files in systemd/ against systemd's own tools and
the built gateway.

- the unit passes `systemd-analyze verify` and its `systemd-analyze security`
  exposure stays at 2.5 ("OK") or better;
- the sysusers.d and tmpfiles.d snippets parse, and applied to an empty root
  they create the user and the directories the unit expects;
- the unit agrees with the binary (exit codes, drain timeout, directory
  modes);
- the gateway, run as the unit runs it and traced with strace, stays inside
  the unit's sandbox: every system call it makes passes SystemCallFilter=,
  its sockets are of RestrictAddressFamilies=, it writes only where
  ProtectSystem=strict leaves it room, and it opens nothing in /proc or /dev
  that ProcSubset=pid or DevicePolicy=closed would hide. systemd is not PID 1
  on the test machines, so this is how the hardening meets the real binary.

Needs systemd-analyze, systemd-sysusers, systemd-tmpfiles (Debian package
systemd), strace, and setpriv/unshare (util-linux), and root for the
scratch-root and unprivileged-run steps. The binary is conftest's
`gateway_bin`.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from conftest import REPO, base_env

SYSTEMD_DIR = REPO / "systemd"
UNIT = SYSTEMD_DIR / "biota-gateway.service"
SYSUSERS = SYSTEMD_DIR / "biota-gateway.sysusers"
TMPFILES = SYSTEMD_DIR / "biota-gateway.tmpfiles"
UNIT_NAME = UNIT.name

# "OK" in systemd-analyze security's scale (0 best .. 10 worst).
MAX_EXPOSURE = 2.5

# Enough traffic for group commits, retention and status updates to happen
# while traced; everything else at its production default.
SIM_CONFIG = """\
[[drivers.sim.devices]]
id = "line"
copies = 2
points = [{ name = "p", copies = 10, waveform = "counter", rate = 100 }]
"""

# The Debian package of each tool the tests call.
PACKAGES = {"strace": "strace", "setpriv": "util-linux", "unshare": "util-linux"}


def tool(name):
    path = shutil.which(name)
    if path is None:
        package = PACKAGES.get(name, "systemd")
        pytest.fail(f"{name} is not installed (Debian package {package}); scripts/test installs it")
    return path


def run(argv, **kwargs):
    kwargs.setdefault("capture_output", True)
    kwargs.setdefault("text", True)
    kwargs.setdefault("timeout", 300)
    kwargs.setdefault("stdin", subprocess.DEVNULL)
    env = dict(SYSTEMD_COLORS="0", SYSTEMD_PAGER="", LC_ALL="C.UTF-8")
    env.update(kwargs.pop("env", {}))
    return subprocess.run(argv, env=base_env(env), **kwargs)


def parse_unit(path):
    """(section, key, value) for each assignment, in file order, continuation
    lines joined: enough of systemd.syntax(7) for our own files."""
    entries, section, pending = [], None, ""
    for raw in Path(path).read_text().splitlines():
        line = pending + raw.strip() if pending else raw.strip()
        pending = ""
        if not line or line[0] in "#;":
            continue
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path}: not an assignment: {line!r}"
        entries.append((section, key.strip(), value.strip()))
    return entries


def unit_values(key, section="Service"):
    return [v for s, k, v in parse_unit(UNIT) if s == section and k == key]


def unit_value(key, section="Service"):
    values = unit_values(key, section)
    assert len(values) == 1, f"{UNIT}: expected one {key}=, found {values}"
    return values[0]


def seconds(timespan):
    """A systemd time span such as 45s, 1min 30s, 500ms."""
    units = {"ms": 0.001, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", timespan):
        total += float(number) * units[unit or "s"]
    return total


@pytest.fixture
def unit_copy(tmp_path, gateway_bin):
    """The unit with ExecStart= pointing at the built binary, because verify
    checks that the command exists."""
    text = UNIT.read_text()
    rewritten, count = re.subn(
        r"^ExecStart=/usr/bin/biota-gateway ",
        f"ExecStart={gateway_bin} ",
        text,
        flags=re.M,
    )
    assert count == 1, f"{UNIT}: expected one ExecStart=/usr/bin/biota-gateway line"
    copy = tmp_path / UNIT_NAME
    copy.write_text(rewritten)
    return copy


# Names another unit file; such lines are about the host, not about us.
OTHER_UNIT = re.compile(
    r"[\w@.\\:-]+\.(service|socket|target|mount|automount|swap|path|timer|slice|scope|device)\b"
)


def verify_findings(unit_path):
    """What `systemd-analyze verify` says about our unit, and its exit code."""
    result = run([tool("systemd-analyze"), "verify", str(unit_path)])
    output = (result.stdout + result.stderr).splitlines()
    ours, others = [], []
    for line in filter(str.strip, output):
        about_us = UNIT_NAME in line or str(unit_path.parent) in line
        if about_us or not OTHER_UNIT.search(line):
            ours.append(line)  # about us, or about nothing we can name: ours
        else:
            others.append(line)
    return result.returncode, ours, others


def test_unit_passes_systemd_analyze_verify(unit_copy, capsys):
    rc, ours, others = verify_findings(unit_copy)
    if others:
        with capsys.disabled():
            print("\nsystemd-analyze verify, about other units (ignored):")
            print("\n".join(f"  {line}" for line in others))
    assert not ours, "systemd-analyze verify complains about the unit:\n" + "\n".join(ours)
    assert rc == 0 or others, f"systemd-analyze verify exited {rc} without saying why"


def test_verify_findings_are_not_filtered_away(unit_copy):
    """The filter above must still see problems in our unit."""
    broken = unit_copy.read_text().replace("\nUMask=", "\nNoSuchSetting=1\nUMask=", 1)
    broken = re.sub(r"^ExecStart=\S+", "ExecStart=/nonexistent/biota-gateway", broken, flags=re.M)
    unit_copy.write_text(broken)
    rc, ours, _ = verify_findings(unit_copy)
    assert rc != 0
    assert any("NoSuchSetting" in line for line in ours), ours
    assert any("/nonexistent/biota-gateway" in line for line in ours), ours


def test_security_exposure_is_ok_or_better(unit_copy, capsys):
    result = run([tool("systemd-analyze"), "security", "--offline=true", "--no-pager", str(unit_copy)])
    output = result.stdout + result.stderr
    match = re.search(r"Overall exposure level for \S+: ([0-9]+(?:\.[0-9]+)?) (\S+)", output)
    assert match, f"no overall exposure in:\n{output}"
    exposure, verdict = float(match.group(1)), match.group(2)
    remaining = [line for line in output.splitlines() if line.startswith(("✗", "-"))]
    with capsys.disabled():
        print(f"\nsystemd-analyze security --offline=true {UNIT_NAME}: {exposure} {verdict}")
        print("\n".join(f"  {line.rstrip()}" for line in remaining))
    assert exposure <= MAX_EXPOSURE, output


# sysusers.d(5): u NAME ID [GECOS [HOME [SHELL]]], g NAME ID, m USER GROUP.
NAME = r"[a-z_][a-z0-9_-]{0,30}"
SYSUSERS_LINE = re.compile(
    rf"^(?:u\s+(?P<u>{NAME})\s+(?:-|\d+|\d+:\d+|\d+:{NAME}|-:{NAME})"
    rf"(?:\s+(?:-|\"[^\"]*\")(?:\s+(?:-|/\S*)(?:\s+(?:-|/\S+))?)?)?"
    rf"|g\s+(?P<g>{NAME})\s+(?:-|\d+)"
    rf"|m\s+(?P<m_user>{NAME})\s+(?P<m_group>{NAME}))$"
)
# tmpfiles.d(5): TYPE PATH MODE USER GROUP AGE [ARGUMENT]; we use d and z only.
TMPFILES_LINE = re.compile(
    r"^(?P<type>[dz])\s+(?P<path>/[\w./-]+)\s+(?P<mode>-|[0-7]{4})"
    rf"\s+(?P<user>-|{NAME})\s+(?P<group>-|{NAME})\s+(?P<age>-|\d+[a-z]*)$"
)


def config_lines(path):
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if line.strip() and not line.lstrip().startswith("#"):
            yield number, line.strip()


def sysusers_entries():
    entries = []
    for number, line in config_lines(SYSUSERS):
        match = SYSUSERS_LINE.match(line)
        assert match, f"{SYSUSERS}:{number}: not a sysusers.d line we accept: {line!r}"
        entries.append(match.groupdict())
    return entries


def tmpfiles_entries():
    entries = {}
    for number, line in config_lines(TMPFILES):
        match = TMPFILES_LINE.match(line)
        assert match, f"{TMPFILES}:{number}: not a tmpfiles.d line we accept: {line!r}"
        entry = match.groupdict()
        assert entry["path"] not in entries, f"{TMPFILES}:{number}: {entry['path']} twice"
        entries[entry["path"]] = entry
    return entries


def test_sysusers_snippet_parses():
    entries = sysusers_entries()
    assert {e["u"] for e in entries if e["u"]} == {"biota"}
    assert ("biota", "dialout") in {(e["m_user"], e["m_group"]) for e in entries}

    result = run([tool("systemd-sysusers"), "--dry-run", str(SYSUSERS)])
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert str(SYSUSERS) not in output, f"systemd-sysusers complains:\n{output}"


def test_tmpfiles_snippet_parses():
    entries = tmpfiles_entries()
    assert set(entries) == {"/etc/biota", "/var/lib/biota"}
    known = {"root", "-"} | {e["u"] for e in sysusers_entries() if e["u"]}
    for entry in entries.values():
        assert entry["user"] in known and entry["group"] in known, entry
        # An age would let systemd-tmpfiles --clean delete the database.
        assert entry["age"] == "-", entry

    # systemd >= 256 can check a file without applying it.
    help_text = run([tool("systemd-tmpfiles"), "--help"]).stdout
    if "--dry-run" in help_text:
        root = tmp_root()
        try:
            result = in_sandbox_root(
                root, [tool("systemd-tmpfiles"), "--dry-run", "--create", str(TMPFILES)]
            )
        finally:
            shutil.rmtree(root)
        assert result.returncode == 0, result.stdout + result.stderr
        assert str(TMPFILES) not in result.stdout + result.stderr, result.stderr


def tmp_root():
    root = Path(tempfile.mkdtemp(prefix="biota-root-"))
    (root / "etc").mkdir()
    result = run([tool("systemd-sysusers"), f"--root={root}", str(SYSUSERS)])
    assert result.returncode == 0, result.stdout + result.stderr
    return root


def in_sandbox_root(root, argv):
    """Runs argv in a private mount namespace where /etc/passwd and
    /etc/group are those of `root`: systemd-tmpfiles resolves names on the
    host even with --root (systemd 252)."""
    script = (
        'mount --bind "$1/etc/passwd" /etc/passwd && '
        'mount --bind "$1/etc/group" /etc/group && shift && exec "$@"'
    )
    return run([tool("unshare"), "--mount", "--propagation", "private",
                "sh", "-c", script, "sh", str(root), *argv])


def passwd(path):
    return {f[0]: f for f in (l.split(":") for l in Path(path).read_text().splitlines()) if f[0]}


def test_sysusers_and_tmpfiles_create_what_the_unit_expects():
    if os.geteuid() != 0:
        pytest.fail("needs root, to chown in a scratch root and bind-mount /etc/passwd")
    root = tmp_root()
    try:
        users, groups = passwd(root / "etc/passwd"), passwd(root / "etc/group")
        assert "biota" in users and "biota" in groups
        assert users["biota"][6] in ("/usr/sbin/nologin", "/sbin/nologin", "/bin/false"), users["biota"]
        assert "biota" in groups["dialout"][3].split(","), groups["dialout"]
        uid, gid = int(users["biota"][2]), int(groups["biota"][2])

        result = in_sandbox_root(
            root, [tool("systemd-tmpfiles"), f"--root={root}", "--create", str(TMPFILES)]
        )
        assert result.returncode == 0, result.stdout + result.stderr
        config, state = (root / "etc/biota").stat(), (root / "var/lib/biota").stat()
        assert (oct(config.st_mode & 0o7777), config.st_uid, config.st_gid) == (oct(0o750), 0, gid)
        assert (oct(state.st_mode & 0o7777), state.st_uid, state.st_gid) == (oct(0o750), uid, gid)
    finally:
        shutil.rmtree(root)


def test_unit_agrees_with_the_binary_and_the_snippets(gateway_bin, tmp_path):
    # A bad configuration exits with the status the unit will not restart on,
    # from the unit's own command line (so its arguments parse, too).
    bad = tmp_path / "gateway.toml"
    bad.write_text("[store]\nno_such_key = 1\n")
    argv = unit_value("ExecStart").split()
    assert argv[:2] == ["/usr/bin/biota-gateway", "run"], argv
    argv = [str(gateway_bin)] + [str(bad) if a == "/etc/biota/gateway.toml" else a for a in argv[1:]]
    result = run(argv, env={"STATE_DIRECTORY": str(tmp_path / "state")}, timeout=60)
    assert str(result.returncode) in unit_value("RestartPreventExitStatus").split(), result.stderr
    assert "no_such_key" in result.stderr

    # systemd must not kill the gateway while it drains.
    sample = run([str(gateway_bin), "print-default-config"]).stdout
    drain = re.search(r'^shutdown_timeout\s*=\s*"([^"]+)"', sample, re.M)
    assert drain, "print-default-config has no shutdown_timeout"
    assert seconds(unit_value("TimeoutStopSec")) >= seconds(drain.group(1)) + 10

    # The directories the unit manages match what tmpfiles creates, or
    # systemd would reset the modes at every start.
    entries = tmpfiles_entries()
    assert unit_value("StateDirectory") == "biota" and unit_value("ConfigurationDirectory") == "biota"
    assert entries["/var/lib/biota"]["mode"] == unit_value("StateDirectoryMode")
    assert entries["/etc/biota"]["mode"] == unit_value("ConfigurationDirectoryMode")
    assert (entries["/var/lib/biota"]["user"], entries["/var/lib/biota"]["group"]) == (
        unit_value("User"),
        unit_value("Group"),
    )
    assert unit_value("Type") == "notify" and unit_value("NotifyAccess") == "main"


# ---------------------------------------------------------------------------
# The gateway inside the unit's sandbox
# ---------------------------------------------------------------------------


def syscall_set(*groups):
    """Expands syscall names and @groups with systemd-analyze syscall-filter."""
    names = set()
    for item in groups:
        if not item.startswith("@"):
            names.add(item)
            continue
        result = run([tool("systemd-analyze"), "syscall-filter", item])
        assert result.returncode == 0, result.stderr
        for line in result.stdout.splitlines()[1:]:
            entry = line.strip()
            if entry and not entry.startswith("#"):
                names |= syscall_set(entry)
    return names


def allowed_syscalls():
    """The unit's SystemCallFilter= lines, applied in order."""
    allowed = None
    for value in unit_values("SystemCallFilter"):
        deny = value.startswith("~")
        names = syscall_set(*value.lstrip("~").split())
        if allowed is None:
            assert not deny, "the unit's first SystemCallFilter= must be an allow list"
            allowed = names
        elif deny:
            allowed -= names
        else:
            allowed |= names
    assert allowed, "the unit has no SystemCallFilter="
    # systemd always permits these (systemd.exec(5)).
    return allowed | {"execve", "exit", "exit_group", "getrlimit", "rt_sigreturn", "sigreturn"}


def readable_dir(prefix):
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


def test_gateway_runs_inside_the_units_sandbox(gateway_bin, capsys):
    strace = tool("strace")
    work = readable_dir("biota-sandbox-")
    try:
        state = work / "state"
        state.mkdir(mode=0o750)
        config = work / "gateway.toml"
        config.write_text(SIM_CONFIG)
        config.chmod(0o644)
        trace = work / "trace"

        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify_path = work / "notify"
        notify.bind(str(notify_path))
        notify_path.chmod(0o777)
        notify.settimeout(0.5)

        # Unprivileged like User=biota; as root we would also exercise code
        # paths (SQLite chowns its files when root) the service never takes.
        drop = []
        if os.geteuid() == 0:
            shutil.chown(state, "nobody")
            drop = [tool("setpriv"), "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
        argv = [str(gateway_bin)] + [
            str(config) if a == "/etc/biota/gateway.toml" else a
            for a in unit_value("ExecStart").split()[1:]
        ]
        env = base_env(
            {"STATE_DIRECTORY": str(state), "NOTIFY_SOCKET": str(notify_path), "WATCHDOG_USEC": "2000000"}
        )
        process = subprocess.Popen(
            [strace, "-f", "-qq", "-e", "signal=none", "-o", str(trace), *drop, *argv],
            cwd=work, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True,
        )
        messages = []

        def receive_until(done, timeout):
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and not done():
                try:
                    messages.append(notify.recv(4096).decode())
                except socket.timeout:
                    if process.poll() is not None:
                        return

        try:
            receive_until(lambda: any("READY=1" in m for m in messages), 60)
            assert any("READY=1" in m for m in messages), f"no READY=1; got {messages}"
            receive_until(lambda: sum("WATCHDOG=1" in m for m in messages) >= 2, 10)
            assert sum("WATCHDOG=1" in m for m in messages) >= 2, messages
            gateway_pid = traced_gateway_pid(trace, gateway_bin)
            os.kill(gateway_pid, signal.SIGTERM)
            receive_until(lambda: any("STOPPING=1" in m for m in messages), 10)
            _, stderr = process.communicate(timeout=60)
            notify.setblocking(False)
            while True:
                try:
                    messages.append(notify.recv(4096).decode())
                except BlockingIOError:
                    break
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()
            notify.close()
        assert process.returncode == 0, f"gateway exited {process.returncode}:\n{stderr[-4000:]}"
        assert any("STOPPING=1" in m for m in messages), messages

        calls = traced_calls(trace, gateway_bin)
        assert len(calls) > 100, "the trace is implausibly short"
        problems = sandbox_violations(calls, state)
        with capsys.disabled():
            used = sorted({name for _, name, _, _ in calls})
            print(f"\ngateway under strace: {len(calls)} calls, {len(used)} distinct system calls")
        assert not problems, "the gateway would break in the unit's sandbox:\n" + "\n".join(problems)
    finally:
        shutil.rmtree(work, ignore_errors=True)


CALL = re.compile(r"^(\d+)\s+([a-z_][a-z0-9_]*)\((.*?)(?:\)\s+=\s+(-?\d+|0x[0-9a-f]+|\?)(.*))?$")


def traced_gateway_pid(trace, gateway_bin):
    exec_line = re.compile(rf'^(\d+)\s+execve\("{re.escape(str(gateway_bin))}".*= 0$')
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for line in trace.read_text(errors="replace").splitlines():
            match = exec_line.match(line)
            if match:
                return int(match.group(1))
        time.sleep(0.1)
    pytest.fail(f"no successful execve of {gateway_bin} in the strace output")


def traced_calls(trace, gateway_bin):
    """(pid, name, arguments, result) of every system call from the
    gateway's own execve on; result is None for unfinished ones."""
    calls, started = [], False
    for line in trace.read_text(errors="replace").splitlines():
        if not started:
            started = re.match(rf'^\d+\s+execve\("{re.escape(str(gateway_bin))}".*= 0$', line)
            continue
        match = CALL.match(line)
        if match:
            pid, name, args, result = match.group(1, 2, 3, 4)
            calls.append((int(pid), name, args, result))
    return calls


def first_path(args):
    match = re.search(r'"((?:[^"\\]|\\.)*)"', args)
    return match.group(1) if match else None


def succeeded(result):
    return result is not None and result != "?" and not result.startswith("-")


def sandbox_violations(calls, state):
    allowed = allowed_syscalls()
    families = set(unit_value("RestrictAddressFamilies").split())
    # ProtectSystem=strict: read-only but for StateDirectory= (here `state`),
    # PrivateTmp='s /tmp and /var/tmp, and the API file systems (/dev
    # filtered by DevicePolicy=, /proc and /sys checked below).
    writable = (str(state) + "/", "/tmp/", "/var/tmp/", "/dev/")
    # DevicePolicy=closed always allows these; DeviceAllow= adds the rest.
    device_names = r"null|zero|full|random|urandom|tty|ptmx|rtc\d*"
    device_names += "".join(
        f"|{v.split()[0][len('char-'):]}\\d+" for v in unit_values("DeviceAllow")
    )
    device_ok = re.compile(rf"^/dev/(?:{device_names})$")
    # ProcSubset=pid leaves only the per-process directories. glibc's malloc
    # reads overcommit_memory when it shrinks a thread arena's heap; hidden,
    # it behaves as under the default overcommit modes (0 and 1).
    proc_ok = re.compile(r"^/proc/(?:self|thread-self|\d+)(?:/|$)|^/proc/sys/vm/overcommit_memory$")
    write_flags = re.compile(r"O_WRONLY|O_RDWR|O_CREAT|O_TRUNC|O_APPEND")
    write_calls = {"mkdir", "mkdirat", "unlink", "unlinkat", "rename", "renameat",
                   "renameat2", "truncate", "rmdir", "link", "linkat", "symlink", "symlinkat"}
    at_calls = {"openat", "openat2", "mkdirat", "unlinkat", "renameat", "renameat2", "linkat"}

    problems = set()
    for _, name, args, result in calls:
        if name not in allowed:
            problems.add(f"system call {name} is not allowed by SystemCallFilter=")
        if name in ("socket", "socketpair"):
            family = args.split(",")[0].strip()
            if family not in families:
                problems.add(f"{name}({family}) is not allowed by RestrictAddressFamilies=")
        is_open = name in ("open", "openat", "openat2", "creat")
        if not (is_open or name in write_calls) or not succeeded(result):
            continue
        path = first_path(args)
        if path is None:
            continue
        if not path.startswith("/"):
            # Relative to a directory fd we cannot resolve here; relative to
            # the working directory only if the unit's (/) is meant.
            if args.startswith("AT_FDCWD") or name not in at_calls:
                problems.add(f"{name} on {path!r} relative to the working directory (/ in the unit)")
            continue
        if (name in write_calls or write_flags.search(args)) and not path.startswith(writable):
            problems.add(f"{name} writes {path}: read-only under ProtectSystem=strict")
        if not is_open:
            continue
        if path.startswith("/proc/") and not proc_ok.match(path):
            problems.add(f"opens {path}: hidden by ProcSubset=pid")
        if path.startswith("/dev/") and not path.startswith("/dev/shm/") and not device_ok.match(path):
            problems.add(f"opens {path}: denied by DevicePolicy=closed")
        if path.startswith(("/home/", "/root/", "/run/user/")):
            problems.add(f"opens {path}: hidden by ProtectHome=yes")
    return sorted(problems)
