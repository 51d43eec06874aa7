"""The order service over gRPC (role ``order-grpc``): ``python -m rpc.grpc``."""


def __getattr__(name: str):
    if name == "build":
        from rpc.grpc.server import build

        return build
    raise AttributeError(name)
