import sys

from scorefetch.cli import main

sys.exit(main())
