"""The rules language: YAML loader, expression compiler, compiled model (SPEC section 2)."""
