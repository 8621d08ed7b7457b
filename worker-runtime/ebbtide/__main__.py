"""`python -m ebbtide ...` is the `ebbtide` CLI."""

from .cli import main

raise SystemExit(main())
