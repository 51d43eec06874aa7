"""The controller's SOAP client: zeep over its async (httpx) transport, with the WSDL read
once from this folder and pointed at each instance. Faults map back onto the domain
error model through their typed OrderFault detail; the trace context goes in the SOAP
header. Balancing, deadlines and retries come from BalancedClient."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import zeep
from zeep.exceptions import Fault, TransportError
from zeep.proxy import AsyncServiceProxy
from zeep.transports import AsyncTransport

from infra.telemetry import client_span, mark_error
from rpc.client import BalancedClient
from rpc.discovery import Discovery
from rpc.errors import Code, DomainError
from rpc.proto import order_pb2

WSDL = Path(__file__).with_name("order.wsdl")
BINDING = "{urn:double11:order:v1}OrderSoap11"
NS = "urn:double11:order:v1"


def fault_error(fault: Fault) -> DomainError:
    code = None
    if fault.detail is not None:
        found = fault.detail.find(f"{{{NS}}}OrderFault/{{{NS}}}code")
        code = found.text if found is not None else None
    try:
        return DomainError(Code(code), fault.message or "SOAP fault")
    except ValueError:
        return DomainError(Code.INTERNAL, f"SOAP fault {fault.code}: {fault.message}")


def order_from_soap(o: Any) -> order_pb2.Order:
    return order_pb2.Order(
        order_id=o.orderId,
        user_id=o.userId,
        lines=[
            order_pb2.OrderLine(
                item_id=ln.itemId, quantity=ln.quantity, unit_price_cents=ln.unitPriceCents or 0
            )
            for ln in o.line
        ],
        coupon_code=o.couponCode or "",
        status=order_pb2.OrderStatus.Value(o.status),
        total_cents=o.totalCents,
        discount_cents=o.discountCents,
        created_at_ms=o.createdAtMs,
        updated_at_ms=o.updatedAtMs,
        reason=o.reason or "",
        history=[
            order_pb2.StatusChange(
                status=order_pb2.OrderStatus.Value(h.status), at_ms=h.atMs, note=h.note or ""
            )
            for h in o.history or []
        ],
    )


class SoapOrderClient(BalancedClient):
    """``call(method, request)`` with the controller's protobuf messages, like the others."""

    def __init__(
        self, target: str | Discovery, timeout: float, *, max_in_flight: int | None = None
    ) -> None:
        super().__init__(target, timeout, max_in_flight=max_in_flight)
        self.http: httpx.AsyncClient | None = None
        self.client: zeep.AsyncClient | None = None
        self._services: dict[str, Any] = {}

    async def start(self) -> None:
        limits = httpx.Limits(max_connections=256, max_keepalive_connections=64)
        self.http = httpx.AsyncClient(limits=limits, timeout=self.timeout, trust_env=False)
        # zeep reads and compiles the WSDL synchronously: once, off the event loop.
        self.client = await asyncio.to_thread(
            zeep.AsyncClient, str(WSDL), transport=AsyncTransport(client=self.http)
        )

    async def stop(self, grace: float) -> None:
        if self.http is not None:
            await self.http.aclose()

    def _service(self, endpoint: str) -> Any:
        if endpoint not in self._services:
            assert self.client is not None
            # Not client.create_service(): on AsyncClient it returns a synchronous proxy.
            binding = self.client.wsdl.bindings[BINDING]
            self._services[endpoint] = AsyncServiceProxy(
                self.client, binding, address=f"http://{endpoint}/soap/order"
            )
        return self._services[endpoint]

    async def invoke(self, endpoint: str, method: str, request: Any, timeout: float) -> Any:
        attributes = {
            "rpc.system": "soap",
            "rpc.service": "OrderService",
            "rpc.method": method,
            "server.address": endpoint,
        }
        with client_span(f"OrderService/{method}", attributes) as (span, carrier):
            operation = getattr(self._service(endpoint), method)
            kwargs = self._arguments(method, request)
            headers: dict[str, Any] = {"timeoutMs": max(1, int(timeout * 1000))}
            if "traceparent" in carrier:
                headers["traceparent"] = carrier["traceparent"]
            try:
                reply = await asyncio.wait_for(operation(**kwargs, _soapheaders=headers), timeout)
            except Fault as fault:
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
            except (httpx.TransportError, TransportError) as exc:
                mark_error(span, str(exc))
                raise DomainError(Code.UNAVAILABLE, f"{endpoint}: {exc}") from None
        if method == "ListOrders":
            return order_pb2.ListOrdersReply(orders=[order_from_soap(o) for o in reply or []])
        return order_from_soap(reply)

    @staticmethod
    def _arguments(method: str, request: Any) -> dict[str, Any]:
        if method == "PlaceOrder":
            return {
                "idempotencyKey": request.idempotency_key,
                "userId": request.user_id,
                "line": [{"itemId": ln.item_id, "quantity": ln.quantity} for ln in request.lines],
                "couponCode": request.coupon_code or None,
            }
        if method == "GetOrder":
            return {"orderId": request.order_id}
        if method == "CancelOrder":
            return {"orderId": request.order_id, "reason": request.reason or None}
        if method == "ListOrders":
            return {"userId": request.user_id, "limit": request.limit}
        raise DomainError(Code.INTERNAL, f"no SOAP mapping for {method}")
