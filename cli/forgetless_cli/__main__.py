import sys

from forgetless_cli.main import main

sys.exit(main())
