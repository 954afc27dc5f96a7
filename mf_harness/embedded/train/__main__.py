import sys

from mf_harness.embedded.train import main

sys.exit(main())
