"""The ddg-node command (run, remove, status, watch, config) and every argparse flag of ddg.
May import: any package of ddg; only ddg.__main__ and the entry point import it."""
