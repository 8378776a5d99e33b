"""Observability: resource samples, `vmsbx top`, run reports and housekeeping."""
