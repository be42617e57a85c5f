"""Pure helpers for every layer: the one retry delay (backoff), rate limits, throttled logs.
May import: the standard library and ddg.errors only."""
