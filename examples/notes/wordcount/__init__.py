"""The wordcount cell: regenerated from requirements.md by `cellmono regen` (see genops/)."""
