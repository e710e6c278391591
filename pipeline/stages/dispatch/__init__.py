"""Dispatch: the carriers file (carriers) and its routes (routing), the journal (journal), the
decisions (decision) and the worker that submits through the connectors (stage)."""
