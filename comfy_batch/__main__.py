"""`python -m comfy_batch`: see `comfy_batch.cli`."""

import sys

from .cli import main

sys.exit(main())
