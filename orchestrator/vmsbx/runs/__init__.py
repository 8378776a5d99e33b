"""Run lifecycle on the host: launch in the guest, stream, record, pull logs."""
