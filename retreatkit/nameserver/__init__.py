"""The LAN's nameserver: caching forwarder, serve-stale, sinkhole, local names."""
