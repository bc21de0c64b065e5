import sys

from lenvm_rl.cli import main

sys.exit(main())
