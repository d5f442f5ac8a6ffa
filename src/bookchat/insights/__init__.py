"""Author insights: the report, its HTTP endpoint and page, and the CLI view."""
