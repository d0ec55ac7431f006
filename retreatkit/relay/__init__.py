"""The blind relay: pairs a sender and a receiver by nameplate, then forwards bytes."""
