"""Test-wide setup: the hypothesis profiles, and the tests' own helper modules on the path.

``HYPOTHESIS_PROFILE`` picks a profile: ``ci`` (the default) keeps the whole properties
suite well under a minute on two cores; ``thorough`` runs many more examples.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from hypothesis import HealthCheck, settings

# builders.py, strategies.py and reference.py sit beside this file and are imported by
# name from tests in every layer (and reference.py by bench/clearing.py too).
_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

settings.register_profile(
    "ci",
    deadline=None,
    derandomize=False,
    max_examples=100,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.register_profile(
    "thorough",
    deadline=None,
    derandomize=False,
    max_examples=2000,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
