"""The admin HTTP surface every service shares: /healthz /status /metrics /loglevel."""
