"""Local node processes: the supervisor, one node process, an embedded Redis, external tools.
May import: ddg.ops (lifeline), ddg.registry, ddg.net, ddg.errors; never ddg.node."""
