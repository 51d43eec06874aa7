"""The order contract over SOAP 1.1 and 1.2 (document/literal wrapped), described by
``order.wsdl`` and served at ``/soap/order`` (``?wsdl`` for the description).

XML is parsed with defusedxml and any DTD is refused (a SOAP message must not have one),
so entity expansion and external entities never happen; bodies are limited to 1 MiB and
element nesting to 32 levels. A malformed envelope is a Client (1.1) / Sender (1.2)
fault; so are the domain's refusals, with the domain code in a typed ``OrderFault``
detail. SOAP 1.1 faults are HTTP 500 (WS-I BP); SOAP 1.2 Sender faults are 400 and
Receiver faults 500, as its HTTP binding says. The trace context comes from the
``traceparent`` SOAP header (or the HTTP header of the same name).
"""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from aiohttp import web
from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring

from infra.http import HttpServer, make_app
from infra.service import Component, Context, run
from infra.telemetry import mark_error, server_span
from rpc import deadline
from rpc.discovery import registration
from rpc.errors import Code, DomainError
from services.order_store import OrderRow
from services.orders import Line, Orders, PlaceOrder, domain

NS = "urn:double11:order:v1"
SOAP11 = "http://schemas.xmlsoap.org/soap/envelope/"
SOAP12 = "http://www.w3.org/2003/05/soap-envelope"
CONTENT_TYPES = {SOAP11: "text/xml", SOAP12: "application/soap+xml"}
WSDL = Path(__file__).with_name("order.wsdl").read_text()
PATH = "/soap/order"
MAX_BODY = 1024 * 1024
MAX_DEPTH = 32
CLIENT_CODES = {
    Code.INVALID_ARGUMENT,
    Code.NOT_FOUND,
    Code.CONFLICT,
    Code.SOLD_OUT,
    Code.UNPROCESSABLE,
}

ET.register_namespace("soap", SOAP11)
ET.register_namespace("env", SOAP12)
ET.register_namespace("d11", NS)


def q(name: str, ns: str = NS) -> str:
    return f"{{{ns}}}{name}"


class Fault(Exception):
    def __init__(self, code: Code, message: str, *, sender: bool | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.sender = code in CLIENT_CODES if sender is None else sender


# -- reading ---------------------------------------------------------------------------
def _depth(root: ET.Element) -> int:
    deepest, stack = 0, [(root, 1)]
    while stack:
        element, depth = stack.pop()
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in element)
    return deepest


def parse_envelope(body: bytes, content_type: str) -> tuple[str, ET.Element, ET.Element | None]:
    """(SOAP namespace, the operation's wrapper element, the Header or None)."""
    try:
        root = fromstring(body, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except DefusedXmlException as exc:
        raise Fault(Code.INVALID_ARGUMENT, f"refused XML: {type(exc).__name__}") from None
    except ET.ParseError as exc:
        raise Fault(Code.INVALID_ARGUMENT, f"malformed XML: {exc}") from None
    if _depth(root) > MAX_DEPTH:
        raise Fault(Code.INVALID_ARGUMENT, f"elements nested deeper than {MAX_DEPTH}")
    soap_ns = root.tag[1:].split("}")[0] if root.tag.startswith("{") else ""
    if root.tag != q("Envelope", soap_ns) or soap_ns not in CONTENT_TYPES:
        raise Fault(Code.INVALID_ARGUMENT, "not a SOAP 1.1 or 1.2 Envelope")
    if content_type and CONTENT_TYPES[soap_ns] != content_type:
        raise Fault(Code.INVALID_ARGUMENT, f"a {content_type} request needs the other SOAP version")
    body_element = root.find(q("Body", soap_ns))
    if body_element is None or len(body_element) != 1:
        raise Fault(Code.INVALID_ARGUMENT, "the Body must hold exactly one element")
    return soap_ns, body_element[0], root.find(q("Header", soap_ns))


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


# -- writing -----------------------------------------------------------------------------
def sub(parent: ET.Element, name: str, value: Any) -> ET.Element:
    element = ET.SubElement(parent, q(name))
    element.text = str(value)
    return element


def order_element(parent: ET.Element, name: str, row: OrderRow) -> None:
    order = ET.SubElement(parent, q(name))
    sub(order, "orderId", row.order_id)
    sub(order, "userId", row.user_id)
    for item_id, quantity, price in row.lines:
        line = ET.SubElement(order, q("line"))
        sub(line, "itemId", item_id)
        sub(line, "quantity", quantity)
        sub(line, "unitPriceCents", price)
    if row.coupon_code:
        sub(order, "couponCode", row.coupon_code)
    sub(order, "status", row.status)
    sub(order, "totalCents", row.total_cents)
    sub(order, "discountCents", row.discount_cents)
    sub(order, "createdAtMs", row.created_at_ms)
    sub(order, "updatedAtMs", row.updated_at_ms)
    if row.reason:
        sub(order, "reason", row.reason)
    for status, at, note in row.history:
        change = ET.SubElement(order, q("history"))
        sub(change, "status", status)
        sub(change, "atMs", at)
        sub(change, "note", note)


def envelope(soap_ns: str, fill: Callable[[ET.Element], None]) -> bytes:
    root = ET.Element(q("Envelope", soap_ns))
    body = ET.SubElement(root, q("Body", soap_ns))
    fill(body)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


def fault_response(soap_ns: str, fault: Fault) -> web.Response:
    def fill(body: ET.Element) -> None:
        element = ET.SubElement(body, q("Fault", soap_ns))
        if soap_ns == SOAP11:
            code = ET.SubElement(element, "faultcode")
            code.text = "soap:Client" if fault.sender else "soap:Server"
            ET.SubElement(element, "faultstring").text = str(fault)
            detail = ET.SubElement(element, "detail")
        else:
            value = ET.SubElement(ET.SubElement(element, q("Code", soap_ns)), q("Value", soap_ns))
            value.text = "env:Sender" if fault.sender else "env:Receiver"
            reason = ET.SubElement(ET.SubElement(element, q("Reason", soap_ns)), q("Text", soap_ns))
            reason.set("{http://www.w3.org/XML/1998/namespace}lang", "en")
            reason.text = str(fault)
            detail = ET.SubElement(element, q("Detail", soap_ns))
        info = ET.SubElement(detail, q("OrderFault"))
        sub(info, "code", fault.code.value)
        sub(info, "message", str(fault))

    status = 400 if soap_ns == SOAP12 and fault.sender else 500
    return web.Response(
        status=status,
        body=envelope(soap_ns, fill),
        content_type=CONTENT_TYPES[soap_ns],
        charset="utf-8",
    )


# -- the operations ----------------------------------------------------------------------
Operation = Callable[[ET.Element, ET.Element], Awaitable[None]]


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
        for row in await self.orders.list(text(request, "userId"), limit):
            order_element(out, "order", row)

    async def echo(self, request: ET.Element, out: ET.Element) -> None:
        sub(out, "message", text(request, "message"))
        sub(out, "servedBy", self.served_by)


def routes(soap: OrderSoap, ctx: Context) -> web.RouteTableDef:
    r = web.RouteTableDef()

    @r.get(PATH)
    async def wsdl(request: web.Request) -> web.Response:
        if "wsdl" not in {k.lower() for k in request.query}:
            return web.Response(status=404, text="GET ?wsdl for the service description")
        address = f"http://{request.host}{PATH}"
        body = WSDL.replace("http://localhost:8081/soap/order", address)
        return web.Response(body=body, content_type="text/xml", charset="utf-8")

    @r.post(PATH)
    async def call(request: web.Request) -> web.Response:
        started = time.perf_counter()
        content_type = request.content_type
        soap_ns = SOAP12 if content_type == "application/soap+xml" else SOAP11
        if content_type not in CONTENT_TYPES.values():
            return web.Response(status=415, text=f"unsupported content type {content_type!r}")
        operation_name, outcome = "?", "OK"
        try:
            raw = await request.read()
            soap_ns, wrapper, header = parse_envelope(raw, content_type)
            operation_name = wrapper.tag.split("}")[-1]
            operation = (
                soap.operations.get(operation_name) if wrapper.tag.startswith(f"{{{NS}}}") else None
            )
            if operation is None:
                raise Fault(Code.INVALID_ARGUMENT, f"no operation {wrapper.tag}")
            action = request.headers.get("SOAPAction", "").strip('"')
            if action and action != f"{NS}#{operation_name}":
                raise Fault(Code.INVALID_ARGUMENT, f"SOAPAction {action!r} does not match")
            carrier = dict(request.headers)
            trace = header.find(q("traceparent")) if header is not None else None
            if trace is not None and trace.text:
                carrier = {"traceparent": trace.text.strip()}
            attributes = {
                "rpc.system": "soap",
                "rpc.service": "OrderService",
                "rpc.method": operation_name,
            }
            with server_span(f"OrderService/{operation_name}", carrier, attributes) as span:
                span.set_attribute("rpc.request.size", len(raw))
                timeout = header.find(q("timeoutMs")) if header is not None else None
                try:
                    response = ET.Element(q(f"{operation_name}Response"))
                    with deadline.scope(deadline.parse_ms(getattr(timeout, "text", None))):
                        await operation(wrapper, response)
                except DomainError as error:
                    mark_error(span, str(error))
                    raise Fault(error.code, error.message) from None
                body = envelope(soap_ns, lambda b: b.append(response))
                span.set_attribute("rpc.response.size", len(body))
            return web.Response(body=body, content_type=CONTENT_TYPES[soap_ns], charset="utf-8")
        except Fault as fault:
            outcome = fault.code.value
            return fault_response(soap_ns, fault)
        finally:
            ctx.metrics.observe("soap", operation_name, outcome, started)

    return r


async def build(ctx: Context) -> Sequence[Component]:
    s = ctx.settings
    orders, components = domain(s)
    app = make_app(ctx, client_max_size=MAX_BODY)
    app.add_routes(routes(OrderSoap(orders, s.name), ctx))
    return [*components, HttpServer(app, s.address, s.port), *registration(s)]


def main() -> None:
    run(build, name="order-soap", role="order-soap", port=8081)
