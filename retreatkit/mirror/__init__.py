"""The caching package mirror: every package crosses the uplink once."""
