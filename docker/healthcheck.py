"""Container health probe: exit 0 when the service's readiness endpoint answers 200, else 1.

The URL comes from ``KIND_HEALTHCHECK_URL`` (default ``http://127.0.0.1:8000/readyz``) so that a deployment
that moves the port (host networking, say) moves the probe with it. Standard library only: the image has no curl.
"""

import os
import sys
import urllib.error
import urllib.request

URL = os.environ.get("KIND_HEALTHCHECK_URL", "http://127.0.0.1:8000/readyz")

try:
    with urllib.request.urlopen(URL, timeout=4) as response:
        sys.exit(0 if response.status == 200 else 1)
except (urllib.error.URLError, OSError) as exc:
    sys.stderr.write(f"not ready: {URL}: {exc}\n")
    sys.exit(1)
