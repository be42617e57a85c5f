from __future__ import annotations

from ddg.cli.node import main

raise SystemExit(main())
