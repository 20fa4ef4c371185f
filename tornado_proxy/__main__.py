import sys

from tornado_proxy.cli import main

sys.exit(main())
