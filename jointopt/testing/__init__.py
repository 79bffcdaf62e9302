"""Contract suites and fakes for tests (never imported by production code).

``jointopt.testing:scripted_backend`` is a valid ``model.backend`` path in study configs;
everything here is re-exported from :mod:`jointopt.testing.contracts`.
"""

from jointopt.testing.contracts import *  # noqa: F401,F403
from jointopt.testing.contracts import __all__  # noqa: F401
