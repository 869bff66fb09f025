"""Run the keygate benchmark suite from a checkout: `python bench/run.py [--quick] [--out DIR]`.

The same as `keygate bench`; see bench/README.md.
"""

import sys
from pathlib import Path

# From a checkout without `pip install -e .`, use the source tree next to this script.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from keygate.benchmark import main

raise SystemExit(main())
