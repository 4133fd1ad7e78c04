"""`python -m schedulerd.sim`: see schedulerd/sim/cli.py."""

import sys

from schedulerd.sim.cli import main

sys.exit(main())
