"""The order contract's wires, registered once.

A wire is a module here with ``build`` (its server adapter, run as
``python -m services.wires.NAME``: the order domain behind the wire's own server), ``main``
and ``Client`` (its client adapter: the contract, :class:`services.order_api.OrderApi`,
over the wire, constructed as ``Client(target, timeout, max_in_flight=N)``), and its tests.
Everything that lists protocols (the controller, the OpenAPI document, ``./d11 load``, the
locustfile, ``bench.rpc``, the topology's ``order-NAME`` roles) reads :data:`WIRES`; adding
a wire is its module and one line below.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType


@dataclass(frozen=True)
class Wire:
    name: str  # X-Order-Protocol, the role's suffix (order-NAME)
    summary: str

    @property
    def module(self) -> str:
        return f"services.wires.{self.name}"

    @property
    def role(self) -> str:
        return f"order-{self.name}"

    def load(self) -> ModuleType:
        return importlib.import_module(self.module)


WIRES: dict[str, Wire] = {
    w.name: w
    for w in (
        Wire("grpc", "gRPC over HTTP/2, protobuf (rpc/proto/order.proto)"),
        Wire("dubbo", "Dubbo 2 frames, Hessian 2 bodies (com.double11.order.OrderService)"),
        Wire("soap", "SOAP 1.1/1.2 document/literal wrapped (order.wsdl)"),
        Wire("oncrpc", "ONC RPC v2 over TCP, XDR (order.x), registered with the portmapper"),
    )
}
PROTOCOLS: tuple[str, ...] = tuple(WIRES)
