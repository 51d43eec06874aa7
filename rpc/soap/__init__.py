"""The order service over SOAP (role ``order-soap``): ``python -m rpc.soap``."""
