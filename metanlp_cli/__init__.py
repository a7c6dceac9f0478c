"""metanlp: a command-line experiment runner for meta-learning in NLP."""

from pathlib import Path

__version__ = "0.1.0"

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
