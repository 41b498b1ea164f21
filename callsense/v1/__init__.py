"""Generated stubs of the callsense.v1 contracts. Do not edit: run `python -m tools.codegen`."""
