#!/bin/sh
# Used by operators: checks the backend answers.
set -e
wget -qO- "http://127.0.0.1:${FRONTEND_PORT:-8088}/api/health" >/dev/null
echo healthy
