"""The order service over SOAP, driven by zeep (the WSDL read from the running service)
for the contract, and by hand-written envelopes for what zeep would never send."""

from __future__ import annotations

import secrets

import httpx
import pytest
import zeep
from lxml import etree
from zeep.exceptions import Fault

from services import catalog
from tests.conftest import Stack, set_stock

ITEM = 15
NS = "urn:double11:order:v1"
SOAP11 = "http://schemas.xmlsoap.org/soap/envelope/"
SOAP12 = "http://www.w3.org/2003/05/soap-envelope"


@pytest.fixture(scope="module")
def url(stack: Stack) -> str:
    set_stock(stack, ITEM, 100_000)
    return stack.url("order-soap", "/soap/order")


@pytest.fixture(scope="module")
def client(url) -> zeep.Client:
    return zeep.Client(f"{url}?wsdl")


def test_wsdl_is_document_literal_wrapped_with_both_bindings(url, http):
    wsdl = etree.fromstring(http.get(f"{url}?wsdl").content)
    ns = {
        "wsdl": "http://schemas.xmlsoap.org/wsdl/",
        "soap": "http://schemas.xmlsoap.org/wsdl/soap/",
        "soap12": "http://schemas.xmlsoap.org/wsdl/soap12/",
    }
    assert wsdl.xpath("//soap:binding/@style", namespaces=ns) == ["document"]
    assert wsdl.xpath("//soap12:binding/@style", namespaces=ns) == ["document"]
    assert set(wsdl.xpath("//soap:body/@use", namespaces=ns)) == {"literal"}
    # The address is where it was fetched from.
    assert wsdl.xpath("//soap:address/@location", namespaces=ns) == [url]


def test_place_get_cancel_with_zeep(client):
    order = client.service.PlaceOrder(
        idempotencyKey=secrets.token_hex(8),
        userId="zeep",
        line=[{"itemId": ITEM, "quantity": 2}],
    )
    assert order.status == "CONFIRMED"
    assert order.totalCents == 2 * catalog.get(ITEM).price_cents
    assert client.service.GetOrder(orderId=order.orderId).orderId == order.orderId
    cancelled = client.service.CancelOrder(orderId=order.orderId, reason="soap says no")
    assert cancelled.status == "CANCELLED"
    assert [h.status for h in cancelled.history] == ["PENDING", "CONFIRMED", "CANCELLED"]


def test_soap12_binding(client):
    service = client.bind("OrderService", "OrderSoap12Port")
    assert service.Echo(message="双十一").message == "双十一"


def fault_code(fault: Fault) -> str:
    (code,) = fault.detail.findall(f"{{{NS}}}OrderFault/{{{NS}}}code")
    return code.text


def test_domain_errors_are_client_faults_with_a_typed_detail(client):
    with pytest.raises(Fault) as info:
        client.service.GetOrder(orderId="no-such-order")
    assert info.value.code == "soap:Client"
    assert fault_code(info.value) == "not-found"
    with pytest.raises(Fault) as info:
        client.service.PlaceOrder(
            idempotencyKey=secrets.token_hex(8), userId="z", line=[{"itemId": ITEM, "quantity": 0}]
        )
    assert fault_code(info.value) == "invalid-argument"


def test_soap12_fault_is_sender_and_http_400(client, url):
    service = client.bind("OrderService", "OrderSoap12Port")
    with pytest.raises(Fault) as info:
        service.GetOrder(orderId="missing")
    assert info.value.code == "env:Sender"


def post(url: str, body: str, *, version: str = "1.1", action: str = "") -> httpx.Response:
    content_type = "text/xml; charset=utf-8" if version == "1.1" else "application/soap+xml"
    headers = {"Content-Type": content_type}
    if action:
        headers["SOAPAction"] = action
    return httpx.post(url, content=body.encode(), headers=headers, trust_env=False)


def echo_envelope(message: str = "x", soap_ns: str = SOAP11, prolog: str = "") -> str:
    return (
        f'{prolog}<s:Envelope xmlns:s="{soap_ns}" xmlns:d="{NS}"><s:Body>'
        f"<d:Echo><d:message>{message}</d:message></d:Echo></s:Body></s:Envelope>"
    )


def assert_client_fault(response: httpx.Response, text: str) -> None:
    assert response.status_code == 500, response.text
    assert "<faultcode>soap:Client</faultcode>" in response.text
    assert text in response.text


def test_hand_written_envelope_and_soapaction(url):
    ok = post(url, echo_envelope("hello"), action=f'"{NS}#Echo"')
    assert ok.status_code == 200 and "<d11:message>hello</d11:message>" in ok.text
    assert_client_fault(post(url, echo_envelope(), action=f'"{NS}#GetOrder"'), "SOAPAction")


BILLION_LAUGHS = (
    '<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
    '<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">'
    '<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>'
)
XXE = '<?xml version="1.0"?><!DOCTYPE r [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'


@pytest.mark.parametrize(
    ("prolog", "message"),
    [
        (BILLION_LAUGHS, "&lol3;"),
        (XXE, "&xxe;"),
        ('<!DOCTYPE r SYSTEM "http://127.0.0.1:9/x.dtd">', "x"),
    ],
    ids=["entity-expansion", "external-entity", "external-dtd"],
)
def test_dtds_entities_and_external_references_are_refused(url, prolog, message):
    response = post(url, echo_envelope(message, prolog=prolog))
    assert_client_fault(response, "refused XML")
    assert "root:" not in response.text and "lollol" not in response.text


@pytest.mark.parametrize(
    ("body", "text"),
    [
        ("<s:Envelope", "malformed XML"),
        ("<notsoap/>", "not a SOAP"),
        (f'<s:Envelope xmlns:s="{SOAP11}"><s:Body/></s:Envelope>', "exactly one"),
        (
            f'<s:Envelope xmlns:s="{SOAP11}"><s:Body><x:Nope xmlns:x="{NS}"/>'
            "</s:Body></s:Envelope>",
            "no operation",
        ),
        (echo_envelope("<a>" * 40 + "</a>" * 40), "nested deeper"),
        (echo_envelope(soap_ns=SOAP12), "other SOAP version"),
    ],
)
def test_malformed_envelopes_are_client_faults(url, body, text):
    assert_client_fault(post(url, body), text)


def test_oversized_body_is_413_and_wrong_type_415(url):
    assert post(url, echo_envelope("x" * (2 * 1024 * 1024))).status_code == 413
    r = httpx.post(
        url, content=b"{}", headers={"Content-Type": "application/json"}, trust_env=False
    )
    assert r.status_code == 415


def test_still_serving_after_abuse(client):
    assert client.service.Echo(message="still here").message == "still here"


def test_the_controllers_zeep_client_over_the_pool_transport(url):
    """The controller's SOAP wire: zeep with its POSTs on the lab's keep-alive pool. Orders
    and faults come back as the contract's, and a dead endpoint is UNAVAILABLE."""
    import asyncio
    from urllib.parse import urlsplit

    from rpc.errors import Code, DomainError
    from services.order_api import Line, PlaceOrder
    from services.wires.soap import Client

    async def scenario() -> None:
        client = Client(urlsplit(url).netloc, timeout=5.0)
        await client.start()
        try:
            key = secrets.token_hex(8)
            order = await client.place(PlaceOrder(key, "pool-user", (Line(ITEM, 2),)), timeout=5)
            assert order.lines[0].quantity == 2 and order.user_id == "pool-user"
            assert (await client.get(order.order_id, timeout=5)).order_id == order.order_id
            with pytest.raises(DomainError) as info:
                await client.get("no-such-order", timeout=5)
            assert info.value.code is Code.NOT_FOUND
        finally:
            await client.stop(0)
        dead = Client("127.0.0.1:9", timeout=1.0)  # discard port: nothing listens
        await dead.start()
        try:
            with pytest.raises(DomainError) as info:
                await dead.get("x", timeout=1)
            assert info.value.code is Code.UNAVAILABLE, info.value
        finally:
            await dead.stop(0)

    asyncio.run(scenario())
