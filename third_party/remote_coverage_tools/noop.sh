#!/bin/sh
# Offline stub: coverage merging is not available without remote_coverage_tools.
exit 0
