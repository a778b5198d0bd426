"""The stored torch.optim.lr_scheduler values (tests/data/torch_schedules.json), loaded once.

Written by tests/data/make_torch_schedules.py with torch 2.13 (torch is not a test
dependency). `TORCH` is None when the file is missing; the tests then fail, naming it.
"""

import json
import os

DATA_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data",
                         "torch_schedules.json")
MISSING = "<tests/data/torch_schedules.json is missing>"


def _load():
  try:
    with open(DATA_PATH) as f:
      return json.load(f)
  except FileNotFoundError:
    return None


TORCH = _load()
