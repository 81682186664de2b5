from phonesim.cli import main

raise SystemExit(main())
