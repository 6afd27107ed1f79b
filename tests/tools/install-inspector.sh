#!/usr/bin/env bash
# Installs the MCP Inspector CLI (an independent MCP client) for tests/test_gateway_inspector.py.
# Needs Node 20+ and npm; 0.22 is the newest release that runs on Node 20 and supports --header.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
if [ -x "$here/inspector/node_modules/.bin/mcp-inspector" ]; then exit 0; fi
mkdir -p "$here/inspector"
npm install --prefix "$here/inspector" --no-audit --no-fund --loglevel=error "@modelcontextprotocol/inspector@0.22"
