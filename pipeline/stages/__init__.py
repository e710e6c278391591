"""The stages, one module or package each with its satellites: a stage's decisions (pure) beside
its I/O. Stages share only contracts (pipeline.records, pipeline.headers, pipeline.errors) and
pure shared logic (pipeline.gcra, pipeline.breaker), never each other's modules; the registry
(pipeline.runtime.registry) names their entry points."""
