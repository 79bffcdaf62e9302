"""Bridges to other libraries: DSPy's LM interface, instruction proposals."""
