import sys

from mergedistill.cli import main

sys.exit(main())
