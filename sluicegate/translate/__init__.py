"""Wire shapes to and from canonical form: pure functions, no I/O."""
