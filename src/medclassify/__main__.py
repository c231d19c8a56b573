"""`python -m medclassify`, and so `torchrun ... -m medclassify train DATA --out RUN`."""

import sys

from medclassify.cli import main

sys.exit(main())
