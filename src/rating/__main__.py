"""`python -m rating ...` is the `rating` command."""

from rating.cli import main

raise SystemExit(main())
