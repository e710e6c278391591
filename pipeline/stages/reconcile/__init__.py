"""Reconcile: receipts joined with submissions (decision), run by stage."""
