import sys

from chimera.cli import main

sys.exit(main())
