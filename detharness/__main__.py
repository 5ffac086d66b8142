from detharness.cli import main

raise SystemExit(main())
