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


@pytest.fixture(params=["numpy", "compiled"])
def executor(request):
    """Run the test with tap programs on numpy's ufuncs, then on the compiled path.

    The compiled path needs the ``jit`` extra (numba), which the README's test
    command installs; without it the compiled half is skipped, and says why.
    """
    from imgconv.core import jit

    if request.param == "compiled" and not jit.installed():
        pytest.skip("the compiled path needs numba: pip install -e '.[test,jit]'")
    jit.set_jit(request.param == "compiled")
    yield request.param
    jit.set_jit(None)
