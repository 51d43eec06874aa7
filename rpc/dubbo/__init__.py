"""Dubbo 2 machinery: Hessian 2.0 serialization (``hessian2``) and the 16-byte-header
frame codec (``codec``), both without I/O; the asyncio ``server`` and ``client``. The order
contract on it is ``services/wires/dubbo.py``."""
