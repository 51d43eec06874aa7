"""The order service over gRPC (role ``order-grpc``): ``python -m rpc.grpc``."""
