"""A Modbus RTU slave for the hil-tests, run by pymodbus (not our code).

    python modbus_rtu_server.py SERIAL_PATH BAUD UNIT[=LAYOUT.json] [UNIT ...]

Serves the given unit ids on one serial line (a socat pty in the tests);
requests to any other unit id go unanswered, like a silent slave on a real
bus. A unit with a layout file serves it (the format of
modbus_tcp_server.py); one without holds U * 100 + N in holding register N
(N = 0..9). Prints "listening" once the port is open.
"""

import asyncio
import json
import sys

from pymodbus import FramerType
from pymodbus.datastore import ModbusDeviceContext, ModbusServerContext, ModbusSparseDataBlock
from pymodbus.exceptions import NoSuchIdException
from pymodbus.server import StartAsyncSerialServer
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


def block(values: dict) -> ModbusSparseDataBlock:
    return ModbusSparseDataBlock({int(a): v for a, v in values.items()} or {65535: 0})


async def main() -> None:
    path, baud = sys.argv[1], int(sys.argv[2])
    devices = {}
    for arg in sys.argv[3:]:
        unit, _, layout_file = arg.partition("=")
        u = int(unit)
        if layout_file:
            with open(layout_file) as f:
                layout = json.load(f)
            devices[u] = ModbusDeviceContext(
                di=block(layout.get("discrete", {})),
                co=block(layout.get("coils", {})),
                hr=block(layout.get("holding", {})),
                ir=block(layout.get("input", {})),
            )
        else:
            devices[u] = ModbusDeviceContext(hr=ModbusSparseDataBlock({a: u * 100 + a for a in range(10)}))
    context = ModbusServerContext(devices=devices, single=False)
    print("listening", flush=True)
    # ignore_missing_devices: an unknown unit id gets no answer at all, as on
    # a real bus where that slave is unplugged.
    await StartAsyncSerialServer(
        context=context, framer=FramerType.RTU, port=path, baudrate=baud, ignore_missing_devices=True
    )


asyncio.run(main())
