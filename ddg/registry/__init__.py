"""A cluster's registry in Redis: connections, the one key layout, Lua scripts, records.
May import: ddg.election (names, timing, bounds), ddg.errors, redis."""
