"""Shared test configuration: hypothesis profiles.

Profiles: `dev` (default, quick), `ci` (what .ci/run uses), `nightly` (long; see README):
    HYPOTHESIS_PROFILE=nightly make test
"""

import os

from hypothesis import HealthCheck, settings

settings.register_profile("dev", max_examples=50, deadline=None)
settings.register_profile(
    "ci", max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "nightly", max_examples=5000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))
