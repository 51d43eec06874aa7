"""The order contract over SOAP (role ``order-soap``): ``python -m services.wires.soap``.

Server: ``order.wsdl`` (WSDL 1.1, document/literal wrapped, SOAP 1.1 and 1.2 bindings) at
``/soap/order`` on rpc/soap's hardened endpoint; domain errors are faults with a typed
``OrderFault`` detail. Client: zeep, its POSTs on the lab's keep-alive pool, the WSDL read once
from this folder and pointed at each instance; the trace context and the deadline go in
the SOAP header (``traceparent``, ``timeoutMs``).
"""

from __future__ import annotations

import asyncio
import importlib
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from infra.http import HttpServer, make_app
from infra.service import Component, Context, run
from infra.telemetry import client_span, mark_error
from rpc.client import BalancedClient
from rpc.discovery import Discovery, registration
from rpc.errors import Code, DomainError
from rpc.soap.envelope import MAX_BODY, Fault, Operation, SoapService
from services.order_api import Line, Order, PlaceOrder, StatusChange
from services.orders import Orders, domain

if TYPE_CHECKING:  # the client's libraries load with the client: a server never needs them
    import zeep
    from zeep.exceptions import Fault as ZeepFault

NS = "urn:double11:order:v1"
WSDL = Path(__file__).with_name("order.wsdl")
PATH = "/soap/order"
BINDING = f"{{{NS}}}OrderSoap11"
ET.register_namespace("d11", NS)


def q(name: str) -> str:
    return f"{{{NS}}}{name}"


# -- server ---------------------------------------------------------------------------------
def text(parent: ET.Element, name: str, required: bool = True) -> str:
    element = parent.find(q(name))
    if element is None:
        if required:
            raise Fault(Code.INVALID_ARGUMENT, f"missing {name}")
        return ""
    return element.text or ""


def integer(parent: ET.Element, name: str) -> int:
    raw = text(parent, name)
    try:
        return int(raw.strip())
    except ValueError:
        raise Fault(Code.INVALID_ARGUMENT, f"{name} is not an integer: {raw[:20]!r}") from None


def sub(parent: ET.Element, name: str, value: Any) -> ET.Element:
    element = ET.SubElement(parent, q(name))
    element.text = str(value)
    return element


def order_element(parent: ET.Element, name: str, order: Order) -> None:
    element = ET.SubElement(parent, q(name))
    sub(element, "orderId", order.order_id)
    sub(element, "userId", order.user_id)
    for ln in order.lines:
        line = ET.SubElement(element, q("line"))
        sub(line, "itemId", ln.item_id)
        sub(line, "quantity", ln.quantity)
        sub(line, "unitPriceCents", ln.unit_price_cents)
    if order.coupon_code:
        sub(element, "couponCode", order.coupon_code)
    sub(element, "status", order.status)
    sub(element, "totalCents", order.total_cents)
    sub(element, "discountCents", order.discount_cents)
    sub(element, "createdAtMs", order.created_at_ms)
    sub(element, "updatedAtMs", order.updated_at_ms)
    if order.reason:
        sub(element, "reason", order.reason)
    for h in order.history:
        change = ET.SubElement(element, q("history"))
        sub(change, "status", h.status)
        sub(change, "atMs", h.at_ms)
        sub(change, "note", h.note)


class OrderSoap:
    def __init__(self, orders: Orders, served_by: str) -> None:
        self.orders, self.served_by = orders, served_by
        self.operations: dict[str, Operation] = {
            "PlaceOrder": self.place,
            "GetOrder": self.get,
            "CancelOrder": self.cancel,
            "ListOrders": self.list,
            "Echo": self.echo,
        }

    async def place(self, request: ET.Element, out: ET.Element) -> None:
        lines = tuple(
            Line(integer(ln, "itemId"), integer(ln, "quantity"))
            for ln in request.findall(q("line"))
        )
        command = PlaceOrder(
            idempotency_key=text(request, "idempotencyKey"),
            user_id=text(request, "userId"),
            lines=lines,
            coupon_code=text(request, "couponCode", required=False),
        )
        order_element(out, "order", await self.orders.place(command))

    async def get(self, request: ET.Element, out: ET.Element) -> None:
        order_element(out, "order", await self.orders.get(text(request, "orderId")))

    async def cancel(self, request: ET.Element, out: ET.Element) -> None:
        reason = text(request, "reason", required=False)[:200]
        order_element(out, "order", await self.orders.cancel(text(request, "orderId"), reason))

    async def list(self, request: ET.Element, out: ET.Element) -> None:
        limit = integer(request, "limit") if request.find(q("limit")) is not None else 20
        for order in await self.orders.list(text(request, "userId"), limit):
            order_element(out, "order", order)

    async def echo(self, request: ET.Element, out: ET.Element) -> None:
        sub(out, "message", text(request, "message"))
        sub(out, "servedBy", self.served_by)


def service(orders: Orders, served_by: str) -> SoapService:
    return SoapService(NS, "OrderService", PATH, WSDL.read_text(),
                       "http://localhost:8081/soap/order",
                       OrderSoap(orders, served_by).operations)  # fmt: skip


async def build(ctx: Context) -> Sequence[Component]:
    s = ctx.settings
    orders, components = domain(s)
    app = make_app(ctx, client_max_size=MAX_BODY)
    app.add_routes(service(orders, s.name).routes(ctx))
    return [*components, HttpServer(app, s.address, s.port), *registration(s)]


def main() -> None:
    run(build, name="order-soap", role="order-soap", port=8081)


# -- client ---------------------------------------------------------------------------------
def fault_error(fault: ZeepFault) -> DomainError:
    code = None
    if fault.detail is not None:
        found = fault.detail.find(f"{{{NS}}}OrderFault/{{{NS}}}code")
        code = found.text if found is not None else None
    try:
        return DomainError(Code(code), fault.message or "SOAP fault")
    except ValueError:
        return DomainError(Code.INTERNAL, f"SOAP fault {fault.code}: {fault.message}")


def order_from_soap(o: Any) -> Order:
    return Order(
        order_id=o.orderId,
        user_id=o.userId,
        lines=tuple(Line(ln.itemId, ln.quantity, ln.unitPriceCents or 0) for ln in o.line),
        status=o.status,
        total_cents=o.totalCents,
        discount_cents=o.discountCents,
        coupon_code=o.couponCode or "",
        created_at_ms=o.createdAtMs,
        updated_at_ms=o.updatedAtMs,
        reason=o.reason or "",
        history=tuple(StatusChange(h.status, h.atMs, h.note or "") for h in o.history or []),
    )


def pool_transport(timeout: float) -> Any:
    """zeep's async transport with its POSTs sent over the lab's HTTP/1.1 keep-alive pool
    (``infra.http1``, the gateway's and the CDN's) rather than httpx: zeep still builds,
    sends and parses every envelope, and httpx's per-request machinery was a third of
    the zeep client's time (bench.rpc)."""
    from urllib.parse import urlsplit

    from requests import Response
    from requests.structures import CaseInsensitiveDict
    from zeep.exceptions import TransportError
    from zeep.transports import AsyncTransport
    from zeep.wsdl.utils import etree_to_string

    from infra.http1 import UpstreamError, UpstreamPool, encode_request

    class PoolTransport(AsyncTransport):
        def __init__(self) -> None:
            super().__init__(timeout=timeout, operation_timeout=timeout)
            self.pool = UpstreamPool(keepalive=64)

        async def post_xml(self, address: str, envelope: Any, headers: dict[str, str]) -> Any:
            url = urlsplit(address)
            host, port = url.hostname or "", url.port or 80
            head = [("Host", url.netloc), ("User-Agent", "Zeep (d11 pool transport)"),
                    *headers.items()]  # fmt: skip
            data = encode_request("POST", url.path or "/", head, etree_to_string(envelope))
            try:
                answer = await self.pool.exchange(url.netloc, host, port, data, head=False,
                                                  connect_timeout=timeout,
                                                  read_timeout=timeout)  # fmt: skip
            except UpstreamError as exc:
                raise TransportError(f"{address}: {exc}") from None
            response = Response()
            response._content = answer.body
            response.status_code = answer.status
            response.headers = CaseInsensitiveDict(answer.headers)
            return response

    return PoolTransport()


class Client(BalancedClient):
    """The contract over SOAP, through zeep (a component)."""

    def __init__(
        self, target: str | Discovery, timeout: float, *, max_in_flight: int | None = None
    ) -> None:
        super().__init__(target, timeout, max_in_flight=max_in_flight)
        self.transport: Any = None
        self.client: zeep.AsyncClient | None = None
        self._services: dict[str, Any] = {}
        self._ready: asyncio.Task[None] | None = None

    async def start(self) -> None:
        pass  # the WSDL is compiled by warm(), once the controller is ready, or at first use

    async def warm(self) -> None:
        await self._compiled()

    def _compiled(self) -> asyncio.Task[None]:
        # zeep's import and its WSDL compile cost ~0.3 s of CPU: in worker threads, and
        # after the host is ready, so a restarted controller serves gRPC and Dubbo orders
        # (and answers its health check) before it is done; SOAP calls wait for it.
        if self._ready is None:
            self._ready = asyncio.create_task(self._compile())
        return self._ready

    async def _compile(self) -> None:
        zeep = await asyncio.to_thread(importlib.import_module, "zeep")
        self.transport = pool_transport(self.timeout)
        self.client = await asyncio.to_thread(zeep.AsyncClient, str(WSDL),
                                              transport=self.transport)  # fmt: skip

    async def stop(self, grace: float) -> None:
        if self._ready is not None and not self._ready.done():
            self._ready.cancel()
        if self.transport is not None:
            self.transport.pool.close()

    def _service(self, endpoint: str) -> Any:
        from zeep.proxy import AsyncServiceProxy

        if endpoint not in self._services:
            assert self.client is not None
            # Not client.create_service(): on AsyncClient it returns a synchronous proxy.
            binding = self.client.wsdl.bindings[BINDING]
            self._services[endpoint] = AsyncServiceProxy(
                self.client, binding, address=f"http://{endpoint}{PATH}"
            )
        return self._services[endpoint]

    async def invoke(self, endpoint: str, method: str, request: Any, timeout: float) -> Any:
        from zeep.exceptions import Fault as ZeepFault
        from zeep.exceptions import TransportError

        attributes = {"rpc.system": "soap", "rpc.service": "OrderService", "rpc.method": method,
                      "server.address": endpoint}  # fmt: skip
        with client_span(f"OrderService/{method}", attributes) as (span, carrier):
            await asyncio.shield(self._compiled())  # the WSDL, compiled once
            operation = getattr(self._service(endpoint), method)
            headers: dict[str, Any] = {"timeoutMs": max(1, int(timeout * 1000))}
            if "traceparent" in carrier:
                headers["traceparent"] = carrier["traceparent"]
            try:
                return await asyncio.wait_for(operation(**request, _soapheaders=headers), timeout)
            except ZeepFault as fault:
                error = fault_error(fault)
                mark_error(span, str(error))
                raise error from None
            except ValueError as exc:  # lxml: a string XML 1.0 cannot carry (control chars)
                mark_error(span, str(exc))
                raise DomainError(
                    Code.INVALID_ARGUMENT, f"not representable in XML: {exc}"
                ) from None
            except TimeoutError:
                mark_error(span, "deadline exceeded")
                raise DomainError(Code.DEADLINE_EXCEEDED, f"{method} timed out") from None
            except TransportError as exc:
                mark_error(span, str(exc))
                raise DomainError(Code.UNAVAILABLE, f"{endpoint}: {exc}") from None

    async def place(self, command: PlaceOrder, *, timeout: float) -> Order:
        request = {
            "idempotencyKey": command.idempotency_key,
            "userId": command.user_id,
            "line": [{"itemId": ln.item_id, "quantity": ln.quantity} for ln in command.lines],
            "couponCode": command.coupon_code or None,
        }
        return order_from_soap(await self.call("PlaceOrder", request, timeout=timeout, retries=1))

    async def get(self, order_id: str, *, timeout: float) -> Order:
        reply = await self.call("GetOrder", {"orderId": order_id}, timeout=timeout, retries=1)
        return order_from_soap(reply)

    async def cancel(self, order_id: str, reason: str, *, timeout: float) -> Order:
        request = {"orderId": order_id, "reason": reason or None}
        return order_from_soap(await self.call("CancelOrder", request, timeout=timeout, retries=1))

    async def list(self, user_id: str, limit: int, *, timeout: float) -> list[Order]:
        request = {"userId": user_id, "limit": limit}
        reply = await self.call("ListOrders", request, timeout=timeout, retries=1)
        return [order_from_soap(o) for o in reply or []]


if __name__ == "__main__":
    main()
