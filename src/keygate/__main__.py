from keygate.cli import main

raise SystemExit(main())
