"""SOAP 1.1 and 1.2 machinery for document/literal wrapped services (``envelope``):
the hardened parser, faults and the HTTP endpoint. The order contract on it is
``services/wires/soap.py``."""
