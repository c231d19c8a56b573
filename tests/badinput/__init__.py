"""Generators and the harness of tests/test_bad_input_corpus.py (issue 11's bad-input corpus)."""
