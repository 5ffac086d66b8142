"""The built-in case library (shipped in the wheel as ``detharness_cases``).

Case files here are discovered by path, not imported as modules of this package.
"""
