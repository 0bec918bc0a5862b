import sys

from etarec.cli import main

sys.exit(main())
