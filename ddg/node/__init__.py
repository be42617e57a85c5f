"""The ddg-node daemon: config, lifecycle, HTTP API, peers, crash hints, membership, storage.
May import: ddg.ops, ddg.client, ddg.registry, ddg.net, ddg.election, ddg.util, ddg.errors."""
