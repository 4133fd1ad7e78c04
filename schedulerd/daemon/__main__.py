from schedulerd.daemon.main import main

main()
