"""The lossdsl grammar, shipped inside the package as ``lossdsl.grammar``."""
