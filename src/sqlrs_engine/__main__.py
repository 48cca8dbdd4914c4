"""`python -m sqlrs_engine` is the same program as the `sqlrs-engine` console script."""

import sys

from sqlrs_engine.cli import main

sys.exit(main())
