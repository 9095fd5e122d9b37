"""Time zones from the pinned ``tzdata`` package, never from the machine's own copy.

``zoneinfo.ZoneInfo`` looks in the system's zone files first and in ``tzdata`` only when
they lack a zone, so the same slot could get another local hour, and so another grid
price, on a machine whose zone data is older or newer (the 2026 data, for one, moves
America/Vancouver to permanent UTC-7 from November 2026; older copies keep UTC-8 in
winter). Reading the zone from the package that ``constraints.txt`` pins makes a run give
the same prices everywhere.
"""

from __future__ import annotations

import functools
import re
from importlib import resources
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

_NAME = re.compile(r"[A-Za-z0-9_+-]+(?:/[A-Za-z0-9_+-]+)*")


@functools.cache
def zone(name: str) -> ZoneInfo:
    """The IANA zone ``name`` (``"America/Vancouver"``, ``"UTC"``) from the ``tzdata``
    package; ``ZoneInfoNotFoundError`` for a name it does not have."""
    if not _NAME.fullmatch(name):
        raise ZoneInfoNotFoundError(f"not a time zone name: {name!r}")
    try:
        with resources.files("tzdata.zoneinfo").joinpath(*name.split("/")).open("rb") as data:
            return ZoneInfo.from_file(data, key=name)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, ValueError):
        raise ZoneInfoNotFoundError(f"no time zone {name!r} in the tzdata package") from None
