"""`python -m dew_csi`: the `dew-csi` command."""

import sys

from dew_csi.cli import main

sys.exit(main())
