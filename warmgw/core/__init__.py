"""Pure logic: no aiohttp, kubernetes or prometheus imports; time and randomness injected."""
