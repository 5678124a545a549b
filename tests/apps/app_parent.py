"""An application that starts a child Python process running app_basic.py."""

import os
import subprocess
import sys

here = os.path.dirname(os.path.abspath(__file__))
child = subprocess.run([sys.executable, os.path.join(here, "app_basic.py")], capture_output=True, text=True,
                       timeout=60, check=False)
print("CHILD", child.stdout.replace("\n", " | "))
sys.stderr.write(child.stderr)
