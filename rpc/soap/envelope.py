"""SOAP 1.1 and 1.2 for any document/literal wrapped service: the hardened envelope
parser, faults, and the HTTP endpoint that dispatches operations (no service's types here;
``services/wires/soap.py`` puts the order contract on it).

XML is parsed with defusedxml and any DTD is refused (a SOAP message must not have one),
so entity expansion and external entities never happen; bodies are limited to 1 MiB and
element nesting to 32 levels. A malformed envelope is a Client (1.1) / Sender (1.2) fault;
so are a service's refusals, with its code in a typed ``<service>Fault`` detail. SOAP 1.1
faults are HTTP 500 (WS-I BP); SOAP 1.2 Sender faults are 400 and Receiver faults 500, as
its HTTP binding says. The trace context comes from the ``traceparent`` header block (or
the HTTP header of the same name), the caller's deadline from ``timeoutMs``.
"""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring

from infra.service import Context
from infra.telemetry import mark_error, server_span
from rpc import deadline
from rpc.errors import Code, DomainError

SOAP11 = "http://schemas.xmlsoap.org/soap/envelope/"
SOAP12 = "http://www.w3.org/2003/05/soap-envelope"
CONTENT_TYPES = {SOAP11: "text/xml", SOAP12: "application/soap+xml"}
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


def q(name: str, ns: str) -> str:
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


# -- writing -----------------------------------------------------------------------------
def envelope(soap_ns: str, fill: Callable[[ET.Element], None]) -> bytes:
    root = ET.Element(q("Envelope", soap_ns))
    body = ET.SubElement(root, q("Body", soap_ns))
    fill(body)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


def fault_response(soap_ns: str, fault: Fault, detail_ns: str, detail_name: str) -> web.Response:
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
        info = ET.SubElement(detail, q(detail_name, detail_ns))
        ET.SubElement(info, q("code", detail_ns)).text = fault.code.value
        ET.SubElement(info, q("message", detail_ns)).text = str(fault)

    status = 400 if soap_ns == SOAP12 and fault.sender else 500
    return web.Response(
        status=status,
        body=envelope(soap_ns, fill),
        content_type=CONTENT_TYPES[soap_ns],
        charset="utf-8",
    )


# -- the endpoint ------------------------------------------------------------------------
Operation = Callable[[ET.Element, ET.Element], Awaitable[None]]


@dataclass
class SoapService:
    """A document/literal wrapped service: operations by wrapper element name, each
    filling its ``<name>Response``. ``wsdl`` is served at ``path?wsdl`` with
    ``placeholder`` (the address in the file) replaced by the address asked."""

    namespace: str
    name: str  # the portType, e.g. OrderService
    path: str
    wsdl: str
    placeholder: str
    operations: dict[str, Operation]

    def routes(self, ctx: Context) -> web.RouteTableDef:
        r = web.RouteTableDef()
        ns = self.namespace

        @r.get(self.path)
        async def wsdl(request: web.Request) -> web.Response:
            if "wsdl" not in {k.lower() for k in request.query}:
                return web.Response(status=404, text="GET ?wsdl for the service description")
            body = self.wsdl.replace(self.placeholder, f"http://{request.host}{self.path}")
            return web.Response(body=body, content_type="text/xml", charset="utf-8")

        @r.post(self.path)
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
                    self.operations.get(operation_name)
                    if wrapper.tag.startswith(f"{{{ns}}}")
                    else None
                )
                if operation is None:
                    raise Fault(Code.INVALID_ARGUMENT, f"no operation {wrapper.tag}")
                action = request.headers.get("SOAPAction", "").strip('"')
                if action and action != f"{ns}#{operation_name}":
                    raise Fault(Code.INVALID_ARGUMENT, f"SOAPAction {action!r} does not match")
                carrier: Any = dict(request.headers)
                trace = header.find(q("traceparent", ns)) if header is not None else None
                if trace is not None and trace.text:
                    carrier = {"traceparent": trace.text.strip()}
                attributes = {"rpc.system": "soap", "rpc.service": self.name,
                              "rpc.method": operation_name}  # fmt: skip
                with server_span(f"{self.name}/{operation_name}", carrier, attributes) as span:
                    span.set_attribute("rpc.request.size", len(raw))
                    timeout = header.find(q("timeoutMs", ns)) if header is not None else None
                    try:
                        response = ET.Element(q(f"{operation_name}Response", ns))
                        with deadline.scope(deadline.parse_ms(getattr(timeout, "text", None))):
                            await operation(wrapper, response)
                    except DomainError as error:
                        mark_error(span, str(error))
                        raise Fault(error.code, error.message) from None
                    body = envelope(soap_ns, lambda b: b.append(response))
                    span.set_attribute("rpc.response.size", len(body))
                return web.Response(
                    body=body, content_type=CONTENT_TYPES[soap_ns], charset="utf-8"
                )
            except Fault as fault:
                outcome = fault.code.value
                return fault_response(soap_ns, fault, ns, self.name.removesuffix("Service") +
                                      "Fault")  # fmt: skip
            finally:
                ctx.metrics.observe("soap", operation_name, outcome, started)

        return r
