from infra.collector.app import main

main()
