"""Modbus RTU slaves for the fault and bench tests, run by pymodbus 3.16
(not our code), built with pymodbus's own SimDevice/SimData model.

    python modbus_rtu_slaves.py SERIAL_PATH BAUD [--stopbits 1|2] UNIT[:KIND] [UNIT[:KIND] ...]

Serves the given unit ids on one serial line (a socat pty in the tests);
requests to any other unit id go unanswered, like an unplugged slave.
KIND says what the unit holds in its holding registers:

- nothing:  register N (0..9) holds U * 100 + N, as modbus_rtu_server.py.
- counter:  the same, except that register 0 holds the number of read
            requests covering it that the unit has answered so far, this one
            included (1, 2, 3, ...): every answer carries a new value, so a
            reading decoded from the wrong answer is told apart.
- holes=A-B,C-D,...:  only the registers in these (inclusive) ranges exist,
            register N holding U * 1000 + N; reading any other address
            gets exception 02 (illegal data address).

Prints "listening" once the port is about to be opened; the line is 8 data
bits, no parity (ptys on this kernel refuse even parity) and the given
stop bits.
"""

from __future__ import annotations

import argparse
import asyncio

from pymodbus import FramerType
from pymodbus.exceptions import NoSuchIdException
from pymodbus.server import StartAsyncSerialServer
from pymodbus.simulator import DataType, SimData, SimDevice
from pymodbus.simulator.simcore import SimCore


def _unknown_unit_is_silent() -> None:
    """pymodbus 3.16's serial server looks a unit id it does not serve up as
    device 0 and, without one, fails with a KeyError that it answers as
    exception 0x04 (a real bus would be silent). Make the lookup raise
    pymodbus's own NoSuchIdException, which ignore_missing_devices turns
    into no answer at all, as from an unplugged slave."""

    def get_device(self, device_id):
        if device_id not in self.devices:
            raise NoSuchIdException(f"unit {device_id} is not on this bus")
        return self.devices[device_id]

    SimCore._SimCore__get_device = get_device


_unknown_unit_is_silent()

READ_REGISTERS = (3, 4)


def counter_action():
    """An action that counts the reads covering register 0 into it."""

    async def action(function_code, start_address, address, count, registers, set_values):
        if set_values is None and function_code in READ_REGISTERS and address <= 0 < address + count:
            i = 0 - start_address
            registers[i] = (registers[i] + 1) & 0xFFFF
        return None

    return action


def device(unit: int, kind: str) -> SimDevice:
    if kind in ("", "plain"):
        values = [unit * 100 + n for n in range(10)]
        return SimDevice(id=unit, simdata=[SimData(0, values=values, datatype=DataType.REGISTERS)])
    if kind == "counter":
        values = [0] + [unit * 100 + n for n in range(1, 10)]
        return SimDevice(
            id=unit,
            simdata=[SimData(0, values=values, datatype=DataType.REGISTERS)],
            action=counter_action(),
        )
    if kind.startswith("holes="):
        blocks = []
        for part in kind.removeprefix("holes=").split(","):
            lo, _, hi = part.partition("-")
            lo_i, hi_i = int(lo), int(hi or lo)
            blocks.append(
                SimData(lo_i, values=[(unit * 1000 + a) & 0xFFFF for a in range(lo_i, hi_i + 1)], datatype=DataType.REGISTERS)
            )
        return SimDevice(id=unit, simdata=blocks)
    raise SystemExit(f"unknown kind {kind!r} for unit {unit}")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path")
    parser.add_argument("baud", type=int)
    parser.add_argument("--stopbits", type=int, default=2, choices=(1, 2))
    parser.add_argument("units", nargs="+", metavar="UNIT[:KIND]")
    args = parser.parse_args()
    devices = []
    for spec in args.units:
        unit, _, kind = spec.partition(":")
        devices.append(device(int(unit), kind))
    print("listening", flush=True)
    await StartAsyncSerialServer(
        context=devices,
        framer=FramerType.RTU,
        port=args.path,
        baudrate=args.baud,
        bytesize=8,
        parity="N",
        stopbits=args.stopbits,
        ignore_missing_devices=True,
    )


asyncio.run(main())
