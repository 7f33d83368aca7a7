from fpnstream.cli.main import main

raise SystemExit(main())
