from warmgw.cli import main

raise SystemExit(main())
