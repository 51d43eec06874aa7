from rpc.soap.server import main

main()
