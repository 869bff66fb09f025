"""`python -m keygate.benchmark` runs the suite (the same as `keygate bench`)."""

from keygate.benchmark import main

raise SystemExit(main())
