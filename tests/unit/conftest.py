"""Unit tests exercise the pure-torch core; they never import ComfyUI."""

from support.pack import import_pack

import_pack()
