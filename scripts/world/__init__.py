"""The bundled synthetic world: a deterministic (seeded) generator of skills, facts,
support tickets and the world-v1 regression suite.  Pure Python, no torch."""
from .generator import SKILLS, World  # noqa: F401
from .build import build_all, write_suite, vocabulary  # noqa: F401
