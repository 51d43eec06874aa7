from rpc.grpc.server import main

main()
