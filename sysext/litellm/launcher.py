#!/opt/litellm/bin/python3
"""/opt/litellm/bin/litellm: pip's console script for `litellm`, plus one start-up change.

Importing the proxy creates millions of long-lived objects (thousands of pydantic models,
hundreds of FastAPI routes), and Python's cyclic garbage collector rescans the growing heap
again and again while they are made: about a third of the start time, for nothing, since
none of it is garbage. So: no collection until the proxy is imported, then gc.freeze()
moves everything made so far out of the collector's sight and collection resumes as usual.
Same imports in the same order as the plain script (the CLI module first: it sets sys.path
and reads LITELLM_MODE; run_server() imports the proxy server first thing). See README.md.
"""

import gc
import importlib
import re
import sys

gc.disable()
from litellm import run_server  # noqa: E402

importlib.import_module("litellm.proxy.proxy_server")

gc.freeze()
gc.enable()

if __name__ == "__main__":
    sys.argv[0] = re.sub(r"(-script\.pyw|\.exe)?$", "", sys.argv[0])
    sys.exit(run_server())
