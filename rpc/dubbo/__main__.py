from rpc.dubbo.order import main

main()
