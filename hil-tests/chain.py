"""A local EVM chain for the hil-tests: anvil (Foundry, from npm) as a real
peer, spoken to over plain JSON-RPC (urllib + json), with eth_abi for the
ABI and keccak for selectors. No web3 library.

    from chain import Anvil, Contract, anchor_contract, anvil   # `anvil` is a fixture

    def test_x(anvil):                        # a fresh chain per test
        anchor = anchor_contract(anvil)       # deploys contracts/build/BiotaAnchor.bin
        gw = anvil.accounts[1]
        anchor.send("setGateway", gw, True)   # from accounts[0], the deployer/owner
        anchor.send("anchor", 1, 1, 3, 3, root, b"\\0" * 32, sender=gw)
        assert anchor.call("nextIndex", gw) == 2
        anvil.stop(); ...; anvil.start()      # same port, same chain (state file)

- `Anvil(workdir)`: `start()` runs the anvil binary of hil-tests/node_modules
  (installed by scripts/test with `npm ci`) on a free loopback port with
  chain id 31337 and `--state`, and waits until `eth_chainId` answers;
  `stop()` ends it with SIGTERM, so it writes its state (blocks, receipts,
  balances, contracts) to the state file, and the next `start()` loads it on
  the same port: the chain is back as it was. `close()` kills it for good.
  `accounts` / `private_keys`: anvil's unlocked dev accounts (its well-known
  mnemonic, read from `--config-out`). `rpc`, `call`, `send` (-> receipt),
  `estimate_gas`, `deploy` (-> address), `block_number`.
- `Contract(chain, address, abi)`: `encode`, `call`, `send`, `estimate_gas`,
  `events(receipt, name)`; a revert raises `Reverted` with the custom
  error's name and arguments decoded from the ABI.
- `compile_contracts(out_dir, *sources)`: contracts/build.mjs with the pinned
  solc-js; `load_artifact(name, build_dir)`: (abi, bytecode).

Nothing here skips a test: a missing anvil or node is an error.
"""

from __future__ import annotations

import json
import os
import platform
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from eth_abi import decode, encode
from eth_hash.auto import keccak

REPO = Path(__file__).resolve().parent.parent
NODE_MODULES = REPO / "hil-tests" / "node_modules"
BUILD_DIR = REPO / "contracts" / "build"
CHAIN_ID = 31337

_ANVIL_PACKAGES = {"x86_64": "anvil-linux-amd64", "amd64": "anvil-linux-amd64",
                   "aarch64": "anvil-linux-arm64", "arm64": "anvil-linux-arm64"}


def anvil_bin() -> Path:
    """The anvil binary that npm's @foundry-rs/anvil installed for this machine
    (its platform sub-package), started directly: killing it kills the node."""
    configured = os.environ.get("BIOTA_ANVIL_BIN")
    if configured:
        return Path(configured)
    package = _ANVIL_PACKAGES.get(platform.machine().lower())
    assert package, f"no anvil npm package for machine {platform.machine()}"
    path = NODE_MODULES / "@foundry-rs" / package / "bin" / "anvil"
    assert path.is_file(), f"{path} is missing: run `npm ci` in hil-tests/ (scripts/test does)"
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RpcError(Exception):
    def __init__(self, method: str, error: dict):
        self.code = error.get("code")
        self.message = error.get("message", "")
        self.data = error.get("data")
        super().__init__(f"{method}: JSON-RPC error {self.code}: {self.message} (data {self.data})")


class Reverted(Exception):
    """A call or transaction reverted; `error` is the custom error's name
    (None when the data matched no error of the ABI), `args` its arguments."""

    def __init__(self, data: bytes, error: str | None = None, args: tuple = ()):
        self.data, self.error, self.args_ = data, error, args
        super().__init__(f"reverted with {error or '0x' + data.hex()}{args if error else ''}")


def _hex(b: bytes) -> str:
    return "0x" + b.hex()


def _bytes(h: str | None) -> bytes:
    return bytes.fromhex(h[2:]) if h else b""


def _revert_data(e: RpcError) -> bytes | None:
    """The revert data of an RPC error, None if the error is not a revert."""
    data = e.data
    if isinstance(data, dict):  # some nodes nest it
        data = data.get("data")
    if isinstance(data, str) and data.startswith("0x"):
        return _bytes(data)
    if "revert" in e.message:
        return b""
    return None


class Anvil:
    """One anvil node on loopback; see the module doc."""

    def __init__(self, workdir: Path, port: int | None = None, extra_args: list[str] | None = None):
        self.extra_args = list(extra_args or [])
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.state_file = self.workdir / "anvil-state.json"
        self.config_file = self.workdir / "anvil-config.json"
        self.log_file = self.workdir / "anvil.log"
        self.proc: subprocess.Popen | None = None
        self.accounts: list[str] = []
        self.private_keys: list[str] = []
        self._id = 0

    @property
    def rpc_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # -- process ------------------------------------------------------------

    def start(self, timeout: float = 20) -> None:
        assert not self.running, "anvil is already running"
        cmd = [
            str(anvil_bin()), "--host", "127.0.0.1", "--port", str(self.port),
            "--chain-id", str(CHAIN_ID), "--silent",
            "--state", str(self.state_file), "--config-out", str(self.config_file),
            *self.extra_args,
        ]
        with open(self.log_file, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"anvil exited with {self.proc.returncode} at start: "
                                   f"{self.log_file.read_text(errors='replace')[-2000:]}")
            try:
                chain_id = int(self.rpc("eth_chainId"), 16)
                break
            except (OSError, urllib.error.URLError):
                if time.monotonic() > deadline:
                    self.close()
                    raise RuntimeError(f"anvil did not answer on {self.rpc_url} within {timeout} s")
                time.sleep(0.05)
        assert chain_id == CHAIN_ID, f"anvil answers chain id {chain_id}"
        config = json.loads(self.config_file.read_text())
        self.accounts = [a.lower() for a in config["available_accounts"]]
        self.private_keys = list(config["private_keys"])

    def stop(self, timeout: float = 15) -> None:
        """Ends anvil gracefully: it writes the state file, which `start` loads."""
        if not self.running:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.close()
            raise RuntimeError(f"anvil did not stop within {timeout} s after SIGTERM")
        self.proc = None
        assert rc == 0, f"anvil exited with {rc} on SIGTERM"
        assert self.state_file.is_file(), "anvil wrote no state file on exit"

    def close(self) -> None:
        """Kills anvil (no state is written)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    # -- JSON-RPC -----------------------------------------------------------

    def rpc(self, method: str, *params, timeout: float = 30):
        self._id += 1
        body = json.dumps({"jsonrpc": "2.0", "id": self._id, "method": method, "params": list(params)})
        req = urllib.request.Request(self.rpc_url, body.encode(), {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            answer = json.load(resp)
        if "error" in answer:
            raise RpcError(method, answer["error"])
        return answer["result"]

    def block_number(self) -> int:
        return int(self.rpc("eth_blockNumber"), 16)

    def _tx(self, to: str | None, data: bytes, sender: str | None, gas: int | None = None) -> dict:
        tx = {"from": sender or self.accounts[0], "data": _hex(data)}
        if to is not None:
            tx["to"] = to
        if gas is not None:
            tx["gas"] = hex(gas)
        return tx

    def call(self, to: str, data: bytes, sender: str | None = None, block: str = "latest") -> bytes:
        """eth_call; raises `Reverted` (undecoded) on a revert."""
        try:
            return _bytes(self.rpc("eth_call", self._tx(to, data, sender), block))
        except RpcError as e:
            revert = _revert_data(e)
            if revert is None:
                raise
            raise Reverted(revert) from None

    def estimate_gas(self, to: str | None, data: bytes, sender: str | None = None) -> int:
        """Gas of the call as a transaction: 21000 + calldata + execution."""
        try:
            return int(self.rpc("eth_estimateGas", self._tx(to, data, sender)), 16)
        except RpcError as e:
            revert = _revert_data(e)
            if revert is None:
                raise
            raise Reverted(revert) from None

    def send(self, sender: str, to: str | None, data: bytes, gas: int | None = None,
             timeout: float = 30) -> dict:
        """eth_sendTransaction from an unlocked account; the mined receipt.
        A transaction that would revert raises `Reverted` (anvil's gas estimate
        reverts; with `gas` given it is mined and fails, and the data is
        replayed with eth_call at its block)."""
        try:
            tx_hash = self.rpc("eth_sendTransaction", self._tx(to, data, sender, gas))
        except RpcError as e:
            revert = _revert_data(e)
            if revert is None:
                raise
            raise Reverted(revert) from None
        receipt = self.wait_receipt(tx_hash, timeout)
        if receipt["status"] != "0x1":
            block = receipt["blockNumber"]
            try:
                self.call(to, data, sender, block)
            except Reverted as r:
                raise Reverted(r.data) from None
            raise Reverted(b"")
        return receipt

    def wait_receipt(self, tx_hash: str, timeout: float = 30) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            receipt = self.rpc("eth_getTransactionReceipt", tx_hash)
            if receipt is not None:
                return receipt
            if time.monotonic() > deadline:
                raise TimeoutError(f"no receipt for {tx_hash} within {timeout} s")
            time.sleep(0.02)

    def deploy(self, bytecode: bytes | str, sender: str | None = None, constructor_args: bytes = b"") -> str:
        """Deploys creation code; the new contract's address (lower-case hex)."""
        if isinstance(bytecode, str):
            bytecode = bytes.fromhex(bytecode.strip().removeprefix("0x"))
        receipt = self.send(sender or self.accounts[0], None, bytecode + constructor_args)
        address = receipt["contractAddress"]
        assert address and self.rpc("eth_getCode", address, "latest") != "0x", "deployment left no code"
        return address.lower()


# ---------------------------------------------------------------------------
# Contracts and their ABI
# ---------------------------------------------------------------------------


def abi_type(param: dict) -> str:
    """The canonical type of an ABI parameter: tuples spelled out, `(…)[]`."""
    t = param["type"]
    if t.startswith("tuple"):
        return "(" + ",".join(abi_type(c) for c in param["components"]) + ")" + t[len("tuple"):]
    return t


def signature(item: dict) -> str:
    return f"{item['name']}({','.join(abi_type(p) for p in item['inputs'])})"


def selector(sig: str) -> bytes:
    return keccak(sig.encode())[:4]


class Contract:
    """A deployed contract: ABI-encoded calls and transactions, decoded
    results, events and custom errors."""

    def __init__(self, chain: Anvil, address: str, abi: list[dict]):
        self.chain, self.address, self.abi = chain, address.lower(), abi
        self.functions: dict[str, dict] = {}
        self.errors: dict[bytes, dict] = {}
        self.events_by_name: dict[str, dict] = {}
        for item in abi:
            kind = item["type"]
            if kind == "function":
                assert item["name"] not in self.functions, f"overloaded {item['name']} is not supported"
                self.functions[item["name"]] = item
            elif kind == "error":
                self.errors[selector(signature(item))] = item
            elif kind == "event":
                self.events_by_name[item["name"]] = item

    def encode(self, name: str, *args) -> bytes:
        fn = self.functions[name]
        types = [abi_type(p) for p in fn["inputs"]]
        assert len(args) == len(types), f"{name} takes {len(types)} arguments, got {len(args)}"
        return selector(signature(fn)) + encode(types, list(args))

    def decode_error(self, data: bytes) -> tuple[str | None, tuple]:
        item = self.errors.get(data[:4])
        if item is None:
            return None, ()
        return item["name"], tuple(decode([abi_type(p) for p in item["inputs"]], data[4:]))

    def _reverted(self, r: Reverted) -> Reverted:
        name, args = self.decode_error(r.data)
        return Reverted(r.data, name, args)

    def call(self, name: str, *args, sender: str | None = None, block: str = "latest"):
        """A view call; the decoded result (a single output unwrapped)."""
        fn = self.functions[name]
        try:
            out = self.chain.call(self.address, self.encode(name, *args), sender, block)
        except Reverted as r:
            raise self._reverted(r) from None
        values = decode([abi_type(p) for p in fn["outputs"]], out)
        return values[0] if len(values) == 1 else values

    def send(self, name: str, *args, sender: str | None = None, gas: int | None = None) -> dict:
        """A transaction from `sender` (default: accounts[0]); its receipt."""
        try:
            return self.chain.send(sender or self.chain.accounts[0], self.address,
                                   self.encode(name, *args), gas)
        except Reverted as r:
            raise self._reverted(r) from None

    def estimate_gas(self, name: str, *args, sender: str | None = None) -> int:
        try:
            return self.chain.estimate_gas(self.address, self.encode(name, *args), sender)
        except Reverted as r:
            raise self._reverted(r) from None

    def events(self, receipt: dict, name: str) -> list[dict]:
        """The `name` events this contract emitted in a receipt, decoded."""
        item = self.events_by_name[name]
        topic0 = "0x" + keccak(signature(item).encode()).hex()
        indexed = [p for p in item["inputs"] if p["indexed"]]
        plain = [p for p in item["inputs"] if not p["indexed"]]
        out = []
        for log in receipt["logs"]:
            if log["address"].lower() != self.address or log["topics"][0] != topic0:
                continue
            event = {}
            for p, topic in zip(indexed, log["topics"][1:]):
                event[p["name"]] = decode([abi_type(p)], _bytes(topic))[0]
            for p, v in zip(plain, decode([abi_type(p) for p in plain], _bytes(log["data"]))):
                event[p["name"]] = v
            out.append(event)
        return out


def compile_contracts(out_dir: Path, *sources: Path) -> None:
    """contracts/build.mjs (pinned solc-js) on `sources` into `out_dir`."""
    cmd = ["node", str(REPO / "contracts" / "build.mjs"), "--out-dir", str(out_dir), *map(str, sources)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout}{done.stderr}"


def load_artifact(name: str, build_dir: Path = BUILD_DIR) -> tuple[list[dict], bytes]:
    """(abi, creation bytecode) written by contracts/build.mjs."""
    abi = json.loads((build_dir / f"{name}.abi.json").read_text())
    bytecode = bytes.fromhex((build_dir / f"{name}.bin").read_text().strip())
    return abi, bytecode


def deploy_contract(chain: Anvil, name: str, build_dir: Path = BUILD_DIR, sender: str | None = None) -> Contract:
    abi, bytecode = load_artifact(name, build_dir)
    return Contract(chain, chain.deploy(bytecode, sender), abi)


def anchor_contract(chain: Anvil, sender: str | None = None) -> Contract:
    """A fresh BiotaAnchor from the committed build; `sender` (default
    accounts[0]) is its owner."""
    return deploy_contract(chain, "BiotaAnchor", BUILD_DIR, sender)


@pytest.fixture
def anvil(tmp_path: Path):
    """A running anvil for one test (see `Anvil`), killed at teardown."""
    chain = Anvil(tmp_path / "anvil")
    chain.start()
    try:
        yield chain
    finally:
        chain.close()
