import sys

from conveyor.agent.server import main

sys.exit(main())
