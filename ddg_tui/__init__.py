"""ddg-console: the Textual operator console for a DuckDuckGoose cluster."""

from __future__ import annotations
