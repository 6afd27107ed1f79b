"""The runbooks are run by papermill through `cellmono runbook run` (tests/ops, .ci/runbooks), not by nbval."""

collect_ignore_glob = ["*.ipynb"]
