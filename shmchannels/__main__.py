import sys

from shmchannels.runtime.cli import main

sys.exit(main())
