"""Session fixtures that build tiny model checkpoints and a tiny ONNX bundle with the project's own export.

(Filled in by the export work, issue 5; loaded from conftest.py through pytest_plugins.)
"""
