"""The order service over a Dubbo-2-compatible binary protocol: Hessian 2.0 serialization
(``hessian2``) and the 16-byte-header frame codec (``codec``), both without I/O."""
