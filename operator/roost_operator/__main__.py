"""`python -m roost_operator`: the same as `roost-operator`."""

import sys

from roost_operator.main import main

sys.exit(main())
