import sys

from pychat.cli import main

sys.exit(main())
