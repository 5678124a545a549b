"""An httpx application calling a local HTTP server (URL in argv[1])."""

import sys

import httpx

with httpx.Client() as client:
    print("STATUS", client.get(sys.argv[1]).status_code)
