"""Development tooling, not the product: bench, soak, the fake Gemini server, evaluation.

The product never imports this package (tests/test_imports.py checks it); the CLI
registers these commands lazily.
"""
