"""MQTT over TLS, with a test CA made by the test (openssl):

- the embedded broker's TLS listener requiring client certificates: a
  `mosquitto_pub` with a certificate from the CA gets through; one without
  a certificate, or with one from another CA, is refused;
- the same listener without `client_ca`: server authentication only;
- the uplink and an upstream subscription to a Mosquitto that requires
  client certificates (mTLS) both work.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from conftest import EXIT_CONFIG, run_cli
from test_modbus_tcp import free_port, wait_until
from test_mqtt import latest


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_ca(d: Path, name: str) -> None:
    openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2", "-subj", f"/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=d,
    )


def make_cert(d: Path, ca: str, name: str, usage: str) -> None:
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=d)
    ext = d / f"{name}.ext"
    ext.write_text(
        f"subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage={usage}\n"
    )
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
            "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", ext.name, cwd=d)


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    d = tmp_path / "pki"
    d.mkdir()
    make_ca(d, "ca")
    make_cert(d, "ca", "server", "serverAuth")
    make_cert(d, "ca", "client", "clientAuth")
    make_ca(d, "rogue-ca")
    make_cert(d, "rogue-ca", "rogue", "clientAuth")
    return d


def pub_tls(port: int, pki: Path, value: str, cert: str | None) -> subprocess.CompletedProcess:
    cmd = ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "--cafile", str(pki / "ca.pem"),
           "-t", "plant/oven-1/telemetry/temp", "-m", value, "-q", "1"]
    if cert:
        cmd += ["--cert", str(pki / f"{cert}.pem"), "--key", str(pki / f"{cert}.key")]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30)


def broker_config(plain: int, tls: int, pki: Path, client_ca: bool) -> str:
    ca = f'client_ca = "{pki / "ca.pem"}"' if client_ca else ""
    return f"""
[store]
commit_max_delay = "20ms"

[drivers.mqtt.broker]
listen = "127.0.0.1:{plain}"

[drivers.mqtt.broker.tls]
listen = "127.0.0.1:{tls}"
cert = "{pki / "server.pem"}"
key = "{pki / "server.key"}"
{ca}

[[drivers.mqtt.rules]]
topic = "plant/{{device}}/telemetry/{{point}}"
format = "plain"
"""


def test_client_certificates_are_required_when_configured(gateway_bin, spawn, write_config, state_dir, pki):
    plain, tls = free_port(), free_port()
    gw = spawn(gateway_bin, write_config(broker_config(plain, tls, pki, client_ca=True)), state_dir)
    gw.wait_ready(timeout=30)
    db = state_dir / "gateway.db"

    ok = pub_tls(tls, pki, "230.5", "client")
    assert ok.returncode == 0, ok.stderr
    assert wait_until(lambda: latest(gateway_bin, db, "oven-1"), 10, "the TLS reading")["temp"]["value"] == 230.5

    for cert in [None, "rogue"]:
        refused = pub_tls(tls, pki, "999", cert)
        assert refused.returncode != 0, f"a client with {cert or 'no'} certificate was accepted"
    assert latest(gateway_bin, db, "oven-1")["temp"]["value"] == 230.5
    assert "MQTT TLS handshake refused" in gw.stderr()
    assert gw.alive()
    assert gw.stop() == 0


def test_server_authentication_only_without_client_ca(gateway_bin, spawn, write_config, state_dir, pki):
    plain, tls = free_port(), free_port()
    gw = spawn(gateway_bin, write_config(broker_config(plain, tls, pki, client_ca=False)), state_dir)
    gw.wait_ready(timeout=30)
    ok = pub_tls(tls, pki, "231", None)
    assert ok.returncode == 0, ok.stderr
    db = state_dir / "gateway.db"
    assert wait_until(lambda: latest(gateway_bin, db, "oven-1"), 10, "the reading")["temp"]["value"] == 231
    assert gw.stop() == 0


def test_a_bad_certificate_is_a_configuration_error_naming_the_file(gateway_bin, spawn, write_config, state_dir, pki):
    (pki / "broken.pem").write_text("not a certificate\n")
    text = broker_config(free_port(), free_port(), pki, client_ca=False).replace(
        str(pki / "server.pem"), str(pki / "broken.pem")
    )
    config = write_config(text)
    # A configuration error (exit 78, which the unit does not restart),
    # found by check-config too, naming the key and the file.
    checked = run_cli(gateway_bin, "check-config", config, "--state-dir", state_dir)
    assert checked.returncode == EXIT_CONFIG, checked
    assert "drivers.mqtt.broker.tls" in checked.stderr and "broken.pem" in checked.stderr, checked.stderr
    gw = spawn(gateway_bin, config, state_dir)
    assert gw.wait_exit(timeout=30) == EXIT_CONFIG
    assert "broken.pem" in gw.stderr()


def test_uplink_and_upstream_with_mutual_tls_to_mosquitto(gateway_bin, spawn, write_config, state_dir, pki, tmp_path):
    port = free_port()
    conf = tmp_path / "mosquitto-tls.conf"
    conf.write_text(
        f"""listener {port} 127.0.0.1
cafile {pki / "ca.pem"}
certfile {pki / "server.pem"}
keyfile {pki / "server.key"}
require_certificate true
allow_anonymous true
# As root, mosquitto would switch to its own user, who cannot read the test's keys.
user root
"""
    )
    mosquitto = subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    out = tmp_path / "uplinked.jsonl"
    sub = None
    try:
        tls_args = ["--cafile", str(pki / "ca.pem"), "--cert", str(pki / "client.pem"), "--key", str(pki / "client.key")]

        def mosquitto_up() -> bool:
            probe = subprocess.run(
                ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), *tls_args, "-t", "probe", "-m", "x"],
                capture_output=True, timeout=10,
            )
            return probe.returncode == 0

        wait_until(mosquitto_up, 10, "mosquitto with TLS")
        with open(out, "wb") as f:
            sub = subprocess.Popen(
                ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), *tls_args, "-t", "biota/#", "-q", "1"],
                stdout=f, stderr=subprocess.DEVNULL,
            )
        tls_client = f'tls = {{ ca = "{pki / "ca.pem"}", cert = "{pki / "client.pem"}", key = "{pki / "client.key"}" }}'
        cfg = write_config(
            f"""
[store]
commit_max_delay = "20ms"

[uplink]
broker = "127.0.0.1:{port}"
client_id = "gw-tls"
{tls_client}

[drivers.mqtt.broker]
enabled = false

[[drivers.mqtt.upstream]]
broker = "127.0.0.1:{port}"
topics = ["plant/#"]
{tls_client}

[[drivers.mqtt.rules]]
topic = "plant/{{device}}/telemetry/{{point}}"
format = "plain"
"""
        )
        gw = spawn(gateway_bin, cfg, state_dir)
        gw.wait_ready(timeout=30)
        db = state_dir / "gateway.db"

        def arrived() -> bool:
            subprocess.run(
                ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), *tls_args,
                 "-t", "plant/press-3/telemetry/force", "-m", "77.5"],
                capture_output=True, timeout=10,
            )
            return bool(db.exists() and latest(gateway_bin, db, "press-3"))

        wait_until(arrived, 15, "a reading through the TLS upstream subscription")

        def uplinked() -> list[dict]:
            rows = []
            for line in out.read_bytes().splitlines():
                try:
                    rows += json.loads(line)["readings"]
                except ValueError:
                    pass
            return rows

        rows = wait_until(uplinked, 15, "the reading through the TLS uplink")
        assert rows[0]["device"] == "press-3" and rows[0]["value"] == 77.5 and rows[0]["seq"] == 1
        status = json.loads(run_cli(gateway_bin, "devices", "--state-dir", str(state_dir), "--json").stdout)
        assert status["uplink"]["connected"] is True
        assert gw.stop() == 0
    finally:
        if sub:
            sub.terminate()
        mosquitto.terminate()
        mosquitto.wait(timeout=10)
