import sys

from nhjc.cli import main

sys.exit(main())
