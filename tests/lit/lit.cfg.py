import os

import lit.formats

config.name = "AutoSP"
config.test_format = lit.formats.ShTest()
config.suffixes = [".mlir"]
config.test_source_root = os.path.dirname(__file__)
# autosp-opt and filecheck come from the project's .venv.
repo = os.path.dirname(os.path.dirname(config.test_source_root))
config.environment["PATH"] = os.pathsep.join([os.path.join(repo, ".venv", "bin"), os.environ.get("PATH", "")])
