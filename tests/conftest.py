import os
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

# Bounded so the whole suite stays quick on two cores; raise with HYPOTHESIS_PROFILE=thorough.
settings.register_profile(
    "ci", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("thorough", max_examples=1000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(scope="session")
def imgconv_script() -> str:
    """The installed console script, for real-process tests."""
    path = Path(sys.executable).parent / ("imgconv.exe" if os.name == "nt" else "imgconv")
    assert path.exists(), f"the imgconv console script is not installed beside {sys.executable}"
    return str(path)
