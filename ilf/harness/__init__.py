"""The harness that serves the workflow: config resolution, path layout, row generation, feature records,
prompt sets and provenance. The method itself (attach, schedule, cache, accounting, checkpoints) lives at
the top of `ilf` and never imports from here."""
