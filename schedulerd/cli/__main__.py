from schedulerd.cli.main import main

main()
