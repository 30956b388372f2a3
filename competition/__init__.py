"""AI-vs-human image detection competition kit: folds -> training -> OOF -> ensemble -> submission."""

import os
from pathlib import Path

# The project folder: competition.yaml, experiments/, folds/, submissions/ live here and relative
# config paths resolve against it. Default: this repository; KIT_HOME points it elsewhere (tests do).
ROOT = Path(os.environ.get("KIT_HOME") or Path(__file__).resolve().parent.parent).resolve()

__all__ = ["ROOT"]
