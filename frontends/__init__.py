"""Importers into AutoSP IR: torch.export programs, and HF model presets."""

from autosp.frontends.source import mode_dependent_modules
from autosp.frontends.torch_export import import_key, import_program, import_settings, joint_graph

__all__ = ["import_key", "import_program", "import_settings", "joint_graph", "mode_dependent_modules"]
