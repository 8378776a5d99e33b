import sys

from vmsbx.agent.server import main

sys.exit(main())
