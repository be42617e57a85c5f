"""The console's widgets, by feature: header, node table, event log, failover history, key bar.
Each is given what to show (views.py), compares it with what it shows and repaints only if it
differs; each lays itself out for its width, again on every resize. May import: views, the
model and what is below it."""
