"""Bootable single-service VM images: a small Linux whose only process is the service."""
