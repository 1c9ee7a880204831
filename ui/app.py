"""`python ui/app.py [--host H] [--port P]`: start the web UI from a checkout (same as `rag ui`).

The UI's code is `rag/apps/ui/` (see ui/README.md); this file is only a launcher.
"""

import sys

from rag.apps.cli import main

if __name__ == "__main__":
    sys.exit(main(["ui", *sys.argv[1:]]))
