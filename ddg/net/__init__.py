"""A node's HTTP plumbing: the bounded listener (server/), TLS settings, request signing.
May import: ddg.util, ddg.errors, aiohttp, cryptography."""
