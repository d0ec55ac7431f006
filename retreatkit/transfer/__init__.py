"""bob's transfer protocol: a sans-I/O core and its asyncio adapter."""
