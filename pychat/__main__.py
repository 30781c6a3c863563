from pychat.cli import main
import sys

sys.exit(main())
