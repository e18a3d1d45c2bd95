"""Parsing the number lists users type into STRING inputs (per-image weights, per-layer weights).

One parser so both inputs accept the same separators and refuse the same things with the
same wording: the node and input, the item's position and text, and how to write it.
"""

from __future__ import annotations

import math
import re

from .errors import ImagePromptError

#: Commas, semicolons, spaces or new lines separate the numbers.
SEPARATORS = re.compile(r"[\s,;]+")


def parse_numbers(text: str | None, where: str, hint: str) -> list[float] | None:
    """'1, 0.5' -> [1.0, 0.5]; blank or None -> None.

    `where` names the node and input ("ApplyIPAdapter layer_weights"); `hint` says how to
    write the list and is appended to every error. Every item must be a finite number.
    """
    if text is None:
        return None
    items = [item for item in SEPARATORS.split(text.strip()) if item]
    if not items:
        return None
    values = []
    for position, item in enumerate(items, start=1):
        try:
            value = float(item)
        except ValueError:
            raise ImagePromptError(f"{where}: item {position} '{item}' is not a number. {hint}") from None
        if not math.isfinite(value):
            raise ImagePromptError(f"{where}: item {position} '{item}' is not a finite number. {hint}")
        values.append(value)
    return values
