from fpnstream.cli import main

raise SystemExit(main())
