"""Fast example tests that kill mutants in the security layer's modules (chain, records, keys, audit)."""

from __future__ import annotations
