import sys

from pssl.cli import main

sys.exit(main())
