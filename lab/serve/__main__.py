import sys

from lab.serve.app import main

sys.exit(main())
