import sys

from warmgw.sim.cli import main

sys.exit(main())
