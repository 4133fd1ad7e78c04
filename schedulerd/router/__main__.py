"""`python -m schedulerd.router`: the same as `schedulerd-router`."""

from schedulerd.router.main import main

main()
