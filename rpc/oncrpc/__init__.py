"""ONC RPC (Sun RPC): XDR (RFC 4506), RPC v2 messages and record marking (RFC 5531),
the portmapper (RFC 1833), an asyncio server and client. The order contract on it is
``services/wires/oncrpc.py``."""
