"""A CoAP device for the hil-tests, run by aiocoap (not our code): it serves
an observable resource /sensors/temp (text/plain, Max-Age 2 s) whose value
starts at START and grows by 0.5 every 0.3 s while someone observes it.

    python coap_observable.py PORT START

Prints "listening" once it serves.
"""

import asyncio
import sys

import aiocoap
import aiocoap.resource as resource


class Temperature(resource.ObservableResource):
    def __init__(self, start: float) -> None:
        super().__init__()
        self.value = start
        self.handle = None

    def tick(self) -> None:
        self.value += 0.5
        self.updated_state()
        self.handle = asyncio.get_running_loop().call_later(0.3, self.tick)

    def update_observation_count(self, count: int) -> None:
        if count and self.handle is None:
            self.handle = asyncio.get_running_loop().call_later(0.3, self.tick)
        elif count == 0 and self.handle is not None:
            self.handle.cancel()
            self.handle = None

    async def render_get(self, request):
        message = aiocoap.Message(payload=f"{self.value:.1f}".encode(), content_format=0)
        message.opt.max_age = 2
        return message


async def main() -> None:
    port, start = int(sys.argv[1]), float(sys.argv[2])
    site = resource.Site()
    site.add_resource(["sensors", "temp"], Temperature(start))
    await aiocoap.Context.create_server_context(site, bind=("127.0.0.1", port))
    print("listening", flush=True)
    await asyncio.get_running_loop().create_future()


asyncio.run(main())
