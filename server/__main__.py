"""``python -m server --checkpoint CKPT --index INDEX``: same as ``phonesim serve``."""

from server.cli import main

raise SystemExit(main())
