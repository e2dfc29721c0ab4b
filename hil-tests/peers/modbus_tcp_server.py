"""A Modbus TCP server for the hil-tests, run by pymodbus (not our code).

    python modbus_tcp_server.py PORT LAYOUT.json

LAYOUT.json: {"holding": {"0": 17, ...}, "input": {...}, "coils": {"0": true, ...},
"discrete": {...}}: 0-based addresses (as on the wire) to values. Only the listed
addresses exist (a sparse block): reading any other answers "illegal data address".
Prints "listening" once it accepts connections.
"""

import asyncio
import json
import sys

from pymodbus.datastore import ModbusDeviceContext, ModbusServerContext, ModbusSparseDataBlock
from pymodbus.server import StartAsyncTcpServer


def block(values: dict) -> ModbusSparseDataBlock:
    # Wire addresses as they are: pymodbus 3.16's device context maps wire
    # address N to block address N (checked by the coil values in the test).
    return ModbusSparseDataBlock({int(a): v for a, v in values.items()} or {65535: 0})


async def main() -> None:
    port = int(sys.argv[1])
    with open(sys.argv[2]) as f:
        layout = json.load(f)
    device = ModbusDeviceContext(
        di=block(layout.get("discrete", {})),
        co=block(layout.get("coils", {})),
        hr=block(layout.get("holding", {})),
        ir=block(layout.get("input", {})),
    )
    context = ModbusServerContext(devices={1: device}, single=False)
    print("listening", flush=True)
    await StartAsyncTcpServer(context=context, address=("127.0.0.1", port))


asyncio.run(main())
