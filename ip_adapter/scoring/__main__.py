"""`python -m ip_adapter.scoring ...`: score a folder of images (see `cli`)."""

import sys

from .cli import main

sys.exit(main())
