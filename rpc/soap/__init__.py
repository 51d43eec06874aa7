"""The order service over SOAP (role ``order-soap``): ``python -m rpc.soap``."""


def __getattr__(name: str):
    if name == "build":
        from rpc.soap.server import build

        return build
    raise AttributeError(name)
