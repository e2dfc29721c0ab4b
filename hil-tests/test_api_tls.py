"""The API over HTTPS (rustls) with a test CA made by openssl, client
certificates when `client_ca` is set, the refusal of plain HTTP on the
network, and tokens managed with `biota-gateway token` while it runs."""

from __future__ import annotations

import http.client
import json
import os
import ssl
import stat
import urllib.error
import urllib.request
from pathlib import Path

from conftest import EXIT_CONFIG, run_cli
from test_modbus_tcp import free_port, wait_until
from test_mqtt_tls import pki  # noqa: F401  (the fixture)

SIM = """
[[drivers.sim.devices]]
id = "press-1"
points = [{ name = "count", waveform = "counter", rate = 20 }]
"""


def api_config(port: int, pki: Path, client_ca: bool = False) -> str:
    tls = f'tls = {{ cert = "{pki}/server.pem", key = "{pki}/server.key"'
    tls += f', client_ca = "{pki}/ca.pem" }}' if client_ca else " }"
    return f'{SIM}\n[api]\nlisten = "127.0.0.1:{port}"\n{tls}\n'


def get(url: str, context: ssl.SSLContext | None = None, token: str | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, context=context, timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def trusting(pki: Path, cert: str | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    if cert:
        context.load_cert_chain(str(pki / f"{cert}.pem"), str(pki / f"{cert}.key"))
    return context


def test_https_and_tokens_created_and_revoked_while_running(gateway_bin, spawn, write_config, state_dir, pki):
    port = free_port()
    gw = spawn(gateway_bin, write_config(api_config(port, pki)), state_dir)
    gw.wait_ready(timeout=30)
    base = f"https://127.0.0.1:{port}"
    status, body = get(f"{base}/v1/health", trusting(pki))
    assert (status, body["status"]) == (200, "ok")
    # Plain HTTP on the TLS port gets no answer.
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/health", timeout=5)
        raise AssertionError("plain HTTP was answered on the TLS port")
    except (urllib.error.URLError, http.client.HTTPException, OSError):
        pass  # a TLS alert, not an HTTP answer
    # A client that does not trust the CA refuses the server.
    try:
        urllib.request.urlopen(f"{base}/v1/health", context=ssl.create_default_context(), timeout=5)
        raise AssertionError("the server's certificate was accepted without its CA")
    except urllib.error.URLError as e:
        assert "CERTIFICATE_VERIFY_FAILED" in str(e)

    created = run_cli(gateway_bin, "token", "create", "--state-dir", state_dir, "--name", "laptop", "--scope", "read")
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    assert token.startswith("bgw_") and len(token) == 68
    tokens = state_dir / "tokens.json"
    assert stat.S_IMODE(os.stat(tokens).st_mode) == 0o600
    assert token not in tokens.read_text()
    listed = run_cli(gateway_bin, "token", "list", "--state-dir", state_dir)
    assert "laptop" in listed.stdout and "read" in listed.stdout and token not in listed.stdout

    def latest() -> list:
        status, body = get(f"{base}/v1/latest", trusting(pki), token)
        assert status == 200, body
        return body["readings"]

    assert {r["point"] for r in wait_until(latest, 10, "a reading over HTTPS")} == {"count"}
    assert run_cli(gateway_bin, "token", "revoke", "--state-dir", state_dir, "laptop").returncode == 0
    status, body = get(f"{base}/v1/latest", trusting(pki), token)
    assert (status, body["error"]) == (401, "unauthorized")
    missing = run_cli(gateway_bin, "token", "revoke", "--state-dir", state_dir, "laptop")
    assert missing.returncode == 1 and "no token named" in missing.stderr
    assert gw.stop() == 0


def test_client_certificates_when_client_ca_is_set(gateway_bin, spawn, write_config, state_dir, pki):
    port = free_port()
    gw = spawn(gateway_bin, write_config(api_config(port, pki, client_ca=True)), state_dir)
    gw.wait_ready(timeout=30)
    url = f"https://127.0.0.1:{port}/v1/health"
    assert get(url, trusting(pki, "client"))[0] == 200
    for cert in [None, "rogue"]:
        try:
            get(url, trusting(pki, cert))
            raise AssertionError(f"a client with {cert or 'no'} certificate was answered")
        except (urllib.error.URLError, ConnectionError, ssl.SSLError, OSError):
            pass
    assert gw.alive()
    assert gw.stop() == 0


def test_plain_http_on_the_network_is_a_config_error(gateway_bin, write_config):
    config = write_config(f'{SIM}\n[api]\nlisten = "0.0.0.0:{free_port()}"\n')
    checked = run_cli(gateway_bin, "check-config", config)
    assert checked.returncode == EXIT_CONFIG
    assert "api.listen" in checked.stderr and "insecure_listen" in checked.stderr
    config = write_config(f'{SIM}\n[api]\nlisten = "0.0.0.0:{free_port()}"\ninsecure_listen = true\n')
    assert run_cli(gateway_bin, "check-config", config).returncode == 0


def test_a_bad_certificate_is_a_configuration_error_naming_the_file(gateway_bin, spawn, write_config, state_dir, pki):
    (pki / "broken.pem").write_text("not a certificate\n")
    text = api_config(free_port(), pki).replace(f"{pki}/server.pem", f"{pki}/broken.pem")
    config = write_config(text)
    # A configuration error (exit 78, which the unit does not restart),
    # found by check-config too, naming the key and the file.
    checked = run_cli(gateway_bin, "check-config", config, "--state-dir", state_dir)
    assert checked.returncode == EXIT_CONFIG, checked
    assert "api.tls" in checked.stderr and "broken.pem" in checked.stderr, checked.stderr
    gw = spawn(gateway_bin, config, state_dir)
    assert gw.wait_exit(timeout=30) == EXIT_CONFIG
    assert "broken.pem" in gw.stderr()
