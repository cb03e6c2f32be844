"""`python -m cai.cli`: the `cai` command."""

import sys

from cai.cli import main

if __name__ == "__main__":
    sys.exit(main())
