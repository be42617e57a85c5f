"""The node's bounded HTTP listener: fd cap and limits, accept errors, connections, bodies.
May import: ddg.util, ddg.errors, aiohttp."""
