"""Evaluation beyond RecBole's own: the multi-interest protocol and interest diagnostics."""
