"""The stage runtime: the batch loop and its checkpoints (runner), stores restored from
compacted changelogs (store), the stage interface (stage), the registry of stages, dead-lettering,
and the delay tiers with their scheduler."""
