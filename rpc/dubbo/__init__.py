"""The order service over a Dubbo-2-compatible binary protocol: Hessian 2.0 serialization
(``hessian2``) and the 16-byte-header frame codec (``codec``), both without I/O."""


def __getattr__(name: str):
    if name == "build":
        from rpc.dubbo.order import build

        return build
    raise AttributeError(name)
