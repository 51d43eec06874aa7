from gateway.proxy import main

main()
