"""`python -m agent`: the same as `schedulerd-agent`."""

import sys

from agent.main import main

sys.exit(main())
