import sys

from smart_dispatch.cli import main

sys.exit(main())
